//! Triage of a new ticket: its category, the skill it needs and its priority. The classifier's
//! category decides when it is confident enough (`routing.categories`, `routing.min_confidence`);
//! otherwise keyword rules do (`routing.rules`). Strongly negative sentiment raises the priority
//! one step; a keyword rule may raise it further.

use std::collections::BTreeMap;

use serde::Deserialize;
use switchboard_contracts::Priority;

use crate::router::RoutingConfig;
use switchboard_models::engine::Prediction;

/// A keyword rule that sets a ticket's category and the skill it needs (used until the
/// classifier models take over the category).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    pub category: String,
    pub skill: String,
    pub keywords: Vec<String>,
    #[serde(default)]
    pub priority: Option<String>,
}

/// What a model category means for routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRoute {
    /// Skill an agent needs; none: anyone may take it.
    #[serde(
        default,
        deserialize_with = "switchboard_core::config::optional_string"
    )]
    pub skill: Option<String>,
    /// Priority of a new ticket in this category (default medium).
    #[serde(
        default,
        deserialize_with = "switchboard_core::config::optional_string"
    )]
    pub priority: Option<String>,
}

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
    categories: BTreeMap<String, (Option<String>, Priority)>,
    min_confidence: f32,
    escalate_sentiment: f32,
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
        let categories = cfg
            .categories
            .iter()
            .map(|(name, route)| {
                let p = route
                    .priority
                    .as_deref()
                    .and_then(Priority::parse)
                    .unwrap_or(Priority::Medium);
                (name.to_lowercase(), (route.skill.clone(), p))
            })
            .collect();
        Rules {
            rules,
            default_skill: cfg.default_skill.clone(),
            categories,
            min_confidence: cfg.min_confidence,
            escalate_sentiment: cfg.escalate_sentiment,
        }
    }

    /// Triage with the models' reading of the message, when there is one.
    pub fn triage_with(
        &self,
        prediction: Option<&Prediction>,
        subject: Option<&str>,
        text: &str,
    ) -> Triage {
        let by_keywords = self.triage(subject, text);
        let Some(p) = prediction else {
            return by_keywords;
        };
        let mut t = match (&p.category, p.category_confidence) {
            (Some(c), Some(conf)) if conf >= self.min_confidence => {
                let category = c.to_lowercase();
                let (skill, priority) = self
                    .categories
                    .get(&category)
                    .cloned()
                    .unwrap_or((self.default_skill.clone(), Priority::Medium));
                // A keyword rule can still say the matter is more urgent.
                let priority = priority.max(by_keywords.priority);
                Triage {
                    category: Some(category),
                    required_skill: skill,
                    priority,
                }
            }
            _ => by_keywords,
        };
        if p.sentiment
            .as_ref()
            .is_some_and(|s| s.score <= self.escalate_sentiment)
        {
            t.priority = raise(t.priority);
        }
        t
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

fn raise(p: Priority) -> Priority {
    p.raised()
}

/// What else about the customer and the conversation moves a ticket's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Factors {
    /// The customer's tier is a VIP tier.
    pub vip: bool,
    /// An order at or above `routing.high_value_order_cents` is involved.
    pub high_value_order: bool,
    /// Earlier tickets about the same category within `routing.repeat_window_days`.
    pub earlier_contacts: u32,
    /// A high-value customer whose churn risk is high (`switchboard_tickets::churn`).
    pub churn_risk: bool,
}

/// The priority after the customer factors, and why it moved (each factor one step: VIP first,
/// then a valuable order, then a repeated contact, then a valuable customer at risk of leaving).
pub fn adjust(base: Priority, f: Factors) -> (Priority, Vec<&'static str>) {
    let mut p = base;
    let mut why = Vec::new();
    for (on, reason) in [
        (f.vip, "vip customer"),
        (f.high_value_order, "high-value order"),
        (f.earlier_contacts > 0, "repeat contact"),
        (f.churn_risk, "valuable customer at risk of churning"),
    ] {
        if on {
            p = p.raised();
            why.push(reason);
        }
    }
    (p, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{CategoryRoute, CategoryRule};

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
            categories: [
                (
                    "shipping_address".to_string(),
                    CategoryRoute {
                        skill: Some("shipping".into()),
                        priority: None,
                    },
                ),
                (
                    "refund".to_string(),
                    CategoryRoute {
                        skill: Some("billing".into()),
                        priority: Some("high".into()),
                    },
                ),
            ]
            .into_iter()
            .collect(),
            min_confidence: 0.6,
            escalate_sentiment: -0.5,
            sweep_interval_ms: 1000,
            ..RoutingConfig::default()
        })
    }

    #[test]
    fn customer_factors_raise_one_step_each_and_cap_at_critical() {
        assert_eq!(
            adjust(Priority::Medium, Factors::default()),
            (Priority::Medium, vec![])
        );
        let all = Factors {
            vip: true,
            high_value_order: true,
            earlier_contacts: 2,
            churn_risk: false,
        };
        assert_eq!(
            adjust(Priority::Low, all),
            (
                Priority::Urgent,
                vec!["vip customer", "high-value order", "repeat contact"]
            )
        );
        let at_risk = Factors {
            churn_risk: true,
            ..Factors::default()
        };
        assert_eq!(
            adjust(Priority::Low, at_risk),
            (
                Priority::Medium,
                vec!["valuable customer at risk of churning"]
            )
        );
        assert_eq!(adjust(Priority::Urgent, all).0, Priority::Critical);
    }

    fn prediction(category: &str, confidence: f32, sentiment: f32) -> Prediction {
        Prediction {
            category: Some(category.into()),
            category_confidence: Some(confidence),
            intent: None,
            intent_confidence: None,
            sentiment: Some(switchboard_contracts::Sentiment {
                label: "x".into(),
                score: sentiment,
            }),
            language: None,
            model_versions: Default::default(),
            truncated: false,
            embedding: Vec::new(),
        }
    }

    #[test]
    fn a_confident_model_decides_the_category_and_skill() {
        let r = rules();
        let t = r.triage_with(
            Some(&prediction("SHIPPING_ADDRESS", 0.9, 0.0)),
            None,
            "hello",
        );
        assert_eq!(t.category.as_deref(), Some("shipping_address"));
        assert_eq!(t.required_skill.as_deref(), Some("shipping"));
        assert_eq!(t.priority, Priority::Medium);
        // Unsure model: the keyword rules decide.
        let t = r.triage_with(
            Some(&prediction("SHIPPING_ADDRESS", 0.3, 0.0)),
            None,
            "my package is late",
        );
        assert_eq!(t.category.as_deref(), Some("delivery"));
        // A keyword rule may still raise the priority; unknown categories go to the default skill.
        let t = r.triage_with(
            Some(&prediction("FEEDBACK", 0.9, 0.0)),
            None,
            "I want my money back",
        );
        assert_eq!(
            (
                t.category.as_deref(),
                t.required_skill.as_deref(),
                t.priority
            ),
            (Some("feedback"), Some("general"), Priority::High)
        );
    }

    #[test]
    fn strongly_negative_sentiment_raises_priority_one_step() {
        let r = rules();
        assert_eq!(
            r.triage_with(Some(&prediction("REFUND", 0.9, -0.8)), None, "x")
                .priority,
            Priority::Urgent
        );
        assert_eq!(
            r.triage_with(Some(&prediction("REFUND", 0.9, -0.2)), None, "x")
                .priority,
            Priority::High
        );
        assert_eq!(raise(Priority::Critical), Priority::Critical);
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
