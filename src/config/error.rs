//! A config problem names its key and line; a `ConfigError` holds every problem
//! found in a file, in file order.

use std::fmt;

/// One thing wrong with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, as `lb.upstreams[1].weight`.
    pub key: String,
    pub message: String,
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.key, self.message)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Everything wrong with a config file, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn single(key: &str, message: impl Into<String>, line: Option<usize>) -> Self {
        ConfigError {
            problems: vec![Problem {
                key: key.to_string(),
                message: message.into(),
                line,
            }],
        }
    }

    /// serde_yaml's message already starts with the path; its " at line L column C"
    /// tail is rewritten into our " (line L)" form.
    pub(super) fn from_serde(e: serde_yaml::Error) -> Self {
        Self::from_serde_in(e, None)
    }

    /// [`ConfigError::from_serde`] for the file `file`: a YAML syntax error
    /// (no key to name) quotes the line it is on, and says what usually
    /// causes it.
    pub(super) fn from_serde_in(e: serde_yaml::Error, file: Option<&str>) -> Self {
        let line = e.location().map(|l| l.line());
        let mut error = Self::from_serde_at(&e);
        let quoted = line
            .zip(file)
            .and_then(|(n, f)| f.lines().nth(n.saturating_sub(1)))
            .map(str::trim)
            .filter(|l| !l.is_empty());
        if let (Some(p), Some(quoted)) = (error.problems.first_mut(), quoted) {
            if p.key.is_empty() {
                p.message = format!(
                    "{} at `{quoted}`: check that this line is indented as the keys beside it \
                     (spaces, not tabs) and that a `key:` has its colon",
                    p.message
                );
            }
        }
        error
    }

    fn from_serde_at(e: &serde_yaml::Error) -> Self {
        let text = e.to_string();
        let text = match text.find(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let (key, message) = match text.split_once(": ") {
            Some((k, m)) if !k.contains(' ') => (k.to_string(), m.to_string()),
            _ => (String::new(), text),
        };
        ConfigError {
            problems: vec![Problem {
                key,
                message,
                line: e.location().map(|l| l.line()),
            }],
        }
    }
}
