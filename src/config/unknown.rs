//! Reads the file into the schema so that one misspelt key does not hide the
//! others: each unknown key is reported with its line and, when a known key is
//! close, the one probably meant; then it is taken out and the file is read
//! again, and validation goes on to report every other problem at once.

use serde_yaml::Value;

use super::error::{ConfigError, Problem};
use super::lines::LineIndex;
use super::schema::RawFile;

/// Unknown keys reported before giving up on a file.
const MAX_UNKNOWN: usize = 64;

/// The schema read from `text`, with the problems of its unknown keys (which
/// were left out), or every problem found when it cannot be read at all.
pub(super) fn read(text: &str, index: &LineIndex) -> Result<(RawFile, Vec<Problem>), ConfigError> {
    let mut value: Value = serde_yaml::from_str(text).map_err(ConfigError::from_serde)?;
    super::inherit::inherit(&mut value);
    let mut problems = Vec::new();
    for _ in 0..MAX_UNKNOWN {
        let e = match serde_path_to_error::deserialize::<_, RawFile>(value.clone()) {
            Ok(raw) => {
                super::inherit::once(&mut problems);
                return Ok((raw, problems));
            }
            Err(e) => e,
        };
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        let message = e.into_inner().to_string();
        let Some((field, expected)) = unknown_field(&message) else {
            // A value of the wrong kind: said plainly, then taken out (its
            // default stands in) so the rest of the file is read too.
            problems.push(Problem {
                line: index.line_of(&path),
                key: path.clone(),
                message: plain(&message),
            });
            let taken_out = path
                .rsplit_once('.')
                .filter(|(_, field)| !field.contains('['))
                .is_some_and(|(map, field)| remove(&mut value, map, field));
            if taken_out {
                continue;
            }
            break;
        };
        // The path may end at the unknown key itself, or at its map.
        let map = path
            .strip_suffix(&format!(".{field}"))
            .unwrap_or(&path)
            .to_string();
        let mut message = format!("unknown field `{field}`");
        if let Some(meant) = closest(field, &expected) {
            message.push_str(&format!(", did you mean `{meant}`?"));
        } else if !expected.is_empty() {
            message.push_str(&format!(", expected one of {}", quoted(&expected)));
        }
        let line = index.line_of(&join(&map, field));
        let removed = remove(&mut value, &map, field);
        problems.push(Problem {
            key: map,
            message,
            line,
        });
        if !removed {
            break;
        }
    }
    super::inherit::once(&mut problems);
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Err(ConfigError { problems })
}

/// serde's message about a value of the wrong kind, in the words of the
/// file: what was written, what goes there, and the value probably meant.
pub(super) fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let number = found.starts_with("integer") || found.starts_with("floating point");
        let shown = found
            .split_once(' ')
            .map_or(found, |(_, v)| v)
            .trim_matches('`');
        return match expected {
            "a string" if number => format!(
                "`{shown}` is a number where text goes (a duration needs its unit: write `{shown}s` or `{shown}ms`)"
            ),
            "i64" | "u64" | "u32" | "u16" | "usize" => {
                format!("{shown} is not a whole number; write e.g. 3")
            }
            "f64" => format!("{shown} is not a number; write e.g. 0.5"),
            "a boolean" => format!("{shown} is not true or false"),
            _ => format!("{shown} does not fit here: expected {expected}"),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<String> = tail
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let mut text = format!("`{value}` is not one of {}", quoted(&expected));
        if let Some(meant) = closest(value, &expected) {
            text.push_str(&format!("; did you mean `{meant}`?"));
        }
        return text;
    }
    message.to_string()
}

/// The key probably meant by a top-level `key` no one knows.
pub(super) fn meant<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    closest(key, known)
}

fn join(map: &str, field: &str) -> String {
    if map.is_empty() {
        field.to_string()
    } else {
        format!("{map}.{field}")
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`",
/// or "there are no fields"): the field and the names expected.
fn unknown_field(message: &str) -> Option<(&str, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field, expected))
}

/// The expected name closest to `field`, if it is close enough to be a slip.
fn closest<'a>(field: &str, expected: &'a [String]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(field, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.as_str())
}

/// Removes `field` from the map at `path` (`lb.upstreams[1]`); false if there
/// is no such map or key.
fn remove(root: &mut Value, path: &str, field: &str) -> bool {
    let mut node = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(next) = node.get_mut(key) else {
            return false;
        };
        node = next;
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Some(next) = index.parse::<usize>().ok().and_then(|i| node.get_mut(i)) else {
                return false;
            };
            node = next;
        }
    }
    node.as_mapping_mut()
        .and_then(|m| m.remove(field))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_give_the_field_and_the_names_expected() {
        let (f, e) =
            unknown_field("unknown field `algoritm`, expected one of `listen`, `algorithm`")
                .unwrap();
        assert_eq!(
            (f, e.as_slice()),
            (
                "algoritm",
                &["listen".to_string(), "algorithm".to_string()][..]
            )
        );
        assert_eq!(unknown_field("invalid type: string"), None);
    }

    #[test]
    fn values_of_the_wrong_kind_are_said_plainly() {
        assert_eq!(
            plain("invalid type: integer `5`, expected a string"),
            "`5` is a number where text goes (a duration needs its unit: write `5s` or `5ms`)"
        );
        assert_eq!(
            plain("invalid type: string \"three\", expected i64"),
            "\"three\" is not a whole number; write e.g. 3"
        );
        assert_eq!(
            plain("unknown variant `cookies`, expected one of `off`, `cookie`, `ip`"),
            "`cookies` is not one of `off`, `cookie`, `ip`; did you mean `cookie`?"
        );
    }

    #[test]
    fn only_a_close_name_is_suggested() {
        let names = ["algorithm".to_string(), "listen".to_string()];
        assert_eq!(closest("algoritm", &names), Some("algorithm"));
        assert_eq!(closest("lisen", &names), Some("listen"));
        assert_eq!(closest("colour", &names), None);
    }

    #[test]
    fn a_key_is_removed_at_its_path() {
        let mut v: Value =
            serde_yaml::from_str("lb:\n  upstreams:\n    - { name: a, wieght: 2 }\n").unwrap();
        assert!(remove(&mut v, "lb.upstreams[0]", "wieght"));
        assert!(v["lb"]["upstreams"][0].get("wieght").is_none());
        assert!(!remove(&mut v, "lb.upstreams[3]", "wieght"));
    }
}
