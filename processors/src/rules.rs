//! Keyword rules that give a new ticket its category, required skill and priority (until the
//! classifier models provide the category).

use switchboard_contracts::Priority;
use switchboard_core::config::RoutingConfig;

/// What the rules decided for a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triage {
    pub category: Option<String>,
    pub required_skill: Option<String>,
    pub priority: Priority,
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<(String, String, Vec<String>, Priority)>,
    default_skill: Option<String>,
}

impl Rules {
    pub fn new(cfg: &RoutingConfig) -> Self {
        let rules = cfg
            .rules
            .iter()
            .map(|r| {
                let priority = r
                    .priority
                    .as_deref()
                    .and_then(Priority::parse)
                    .unwrap_or(Priority::Medium);
                (
                    r.category.clone(),
                    r.skill.clone(),
                    r.keywords.iter().map(|k| k.to_lowercase()).collect(),
                    priority,
                )
            })
            .collect();
        Rules {
            rules,
            default_skill: cfg.default_skill.clone(),
        }
    }

    /// The first rule with a keyword in the subject or text wins (whole words, case-insensitive).
    pub fn triage(&self, subject: Option<&str>, text: &str) -> Triage {
        let hay = format!(" {} {} ", subject.unwrap_or_default(), text).to_lowercase();
        let words: String = hay
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        let words = format!(
            " {} ",
            words.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        for (category, skill, keywords, priority) in &self.rules {
            if keywords.iter().any(|k| words.contains(&format!(" {k} "))) {
                return Triage {
                    category: Some(category.clone()),
                    required_skill: Some(skill.clone()),
                    priority: *priority,
                };
            }
        }
        Triage {
            category: None,
            required_skill: self.default_skill.clone(),
            priority: Priority::Medium,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::config::CategoryRule;

    fn rules() -> Rules {
        Rules::new(&RoutingConfig {
            default_skill: Some("general".into()),
            rules: vec![
                CategoryRule {
                    category: "refund".into(),
                    skill: "billing".into(),
                    keywords: vec!["refund".into(), "money back".into()],
                    priority: Some("high".into()),
                },
                CategoryRule {
                    category: "delivery".into(),
                    skill: "shipping".into(),
                    keywords: vec!["package".into()],
                    priority: None,
                },
            ],
            sweep_interval_ms: 1000,
        })
    }

    #[test]
    fn first_matching_rule_wins() {
        let t = rules().triage(Some("Where is my PACKAGE?"), "I want my money back!");
        assert_eq!(t.category.as_deref(), Some("refund"));
        assert_eq!(t.required_skill.as_deref(), Some("billing"));
        assert_eq!(t.priority, Priority::High);
        let t = rules().triage(None, "my package is late");
        assert_eq!(t.category.as_deref(), Some("delivery"));
        assert_eq!(t.priority, Priority::Medium);
    }

    #[test]
    fn whole_words_only_and_default_skill() {
        let t = rules().triage(None, "the packages are refundable");
        assert_eq!(t.category, None);
        assert_eq!(t.required_skill.as_deref(), Some("general"));
    }
}
