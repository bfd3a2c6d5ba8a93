//! Where connectors keep message contents that do not travel on Kafka (attachments), so the
//! serving role finds them: `data_dir/attachments/<first two hex>/<sha256 hex>`.

use std::path::{Path, PathBuf};

/// The file of an attachment's storage key; `None` unless the key is 64 hex digits (so a key
/// can never name a path outside the store).
pub fn attachment_path(data_dir: &Path, key: &str) -> Option<PathBuf> {
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(data_dir.join("attachments").join(&key[..2]).join(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_keys_name_files() {
        let d = Path::new("/d");
        let k = "ab".repeat(32);
        assert_eq!(
            attachment_path(d, &k),
            Some(PathBuf::from(format!("/d/attachments/ab/{k}")))
        );
        assert_eq!(attachment_path(d, "../../etc/passwd"), None);
        assert_eq!(attachment_path(d, &"zz".repeat(32)), None);
    }
}
