//! An htpasswd file (`user:hash` per line, as `htpasswd -B` writes) with
//! bcrypt or argon2 hashes, checked by the `bcrypt` and `argon2` crates. Older
//! schemes (apr1 MD5, SHA-1, crypt) are refused at load: they are too fast to
//! stand a stolen file.

use std::collections::HashMap;

use argon2::PasswordVerifier;

/// One user's stored hash.
#[derive(Debug, Clone, PartialEq)]
enum Hash {
    Bcrypt(String),
    Argon2(String),
}

/// The users of one file.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, Hash>,
    /// The cost of its first bcrypt hash (`htpasswd -B`'s 10 if none).
    cost: u32,
    /// Checked against when the user is unknown, so that an unknown user
    /// costs what a known one does (no telling users apart by time): a
    /// hash of a random password at `cost`, made the first time it is needed.
    unknown: std::sync::OnceLock<String>,
}

impl Htpasswd {
    /// Reads `text`; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        let mut cost = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {at}: not `user:hash`"))?;
            if user.is_empty() {
                return Err(format!("line {at}: no user name"));
            }
            let hash = if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                let parts = hash
                    .parse::<bcrypt::HashParts>()
                    .map_err(|e| format!("line {at}: a broken bcrypt hash ({e})"))?;
                cost.get_or_insert(parts.get_cost());
                Hash::Bcrypt(hash.to_string())
            } else if hash.starts_with("$argon2") {
                argon2::password_hash::phc::PasswordHash::new(hash)
                    .map_err(|e| format!("line {at}: a broken argon2 hash ({e})"))?;
                Hash::Argon2(hash.to_string())
            } else {
                return Err(format!(
                    "line {at}: user `{user}` has a hash that is neither bcrypt nor argon2; \
                     write it with `htpasswd -B`"
                ));
            };
            if users.insert(user.to_string(), hash).is_some() {
                return Err(format!("line {at}: user `{user}` is listed twice"));
            }
        }
        Ok(Htpasswd {
            users,
            cost: cost.unwrap_or(10),
            unknown: std::sync::OnceLock::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Slow by design (tens of
    /// milliseconds): call it off the request path's threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::Argon2(h)) => argon2::Argon2::default()
                .verify_password(password.as_bytes(), h.as_str())
                .is_ok(),
            None => {
                let unknown = self.unknown.get_or_init(|| {
                    let random: [u8; 16] = rand::random();
                    bcrypt::hash(random, self.cost).unwrap_or_default()
                });
                let _ = bcrypt::verify(password, unknown);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;

    #[test]
    fn bcrypt_and_argon2_users_are_checked_and_others_refused() {
        let b = bcrypt::hash("s3cret", 4).unwrap();
        let a = argon2::Argon2::default()
            .hash_password(b"other pass")
            .unwrap()
            .to_string();
        let file = Htpasswd::parse(&format!("# users\nalice:{b}\n\nbob:{a}\n")).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "s3cret "));
        assert!(file.verify("bob", "other pass"));
        assert!(!file.verify("bob", "s3cret"));
        assert!(!file.verify("carol", "s3cret"), "unknown user");
        assert_eq!(file.cost, 4);
    }

    #[test]
    fn a_bad_line_is_named() {
        let md5 = "alice:$apr1$abc$0123456789abcdef012345";
        assert!(Htpasswd::parse(md5)
            .unwrap_err()
            .starts_with("line 1: user `alice` has a hash that is neither bcrypt nor argon2"));
        assert_eq!(
            Htpasswd::parse("\nno colon here").unwrap_err(),
            "line 2: not `user:hash`"
        );
        assert!(Htpasswd::parse("a:$2y$10$short")
            .unwrap_err()
            .starts_with("line 1: a broken bcrypt hash"));
        let b = bcrypt::hash("x", 4).unwrap();
        assert!(Htpasswd::parse(&format!("a:{b}\na:{b}"))
            .unwrap_err()
            .contains("listed twice"));
    }
}
