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
