//! Where each key of a YAML document sits, so that validation errors found after
//! deserialization can still name the line, as serde's own errors do.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) by path, written the way serde_yaml writes paths in its
/// errors: `lb.upstreams[1].weight`.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// Top-level keys in document order, with their lines.
    top_level: Vec<(String, usize)>,
}

impl LineIndex {
    /// Indexes `text`. A document that does not parse gives an empty index: serde's
    /// parse error, which names the line itself, is reported instead.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        builder.index
    }

    /// The line of `path`, or of its nearest ancestor that is in the file (a key
    /// left to its default is reported at the section that would hold it).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Whether the file itself gives `path` (not a default, not inherited).
    pub fn has(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }

    pub fn top_level_keys(&self) -> &[(String, usize)] {
        &self.top_level
    }
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next, once it has been read.
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    index: LineIndex,
    stack: Vec<Frame>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Builder {
    /// Called for every node that starts: returns the node's path when it is a value
    /// (None when it was a mapping key, which is recorded here).
    fn node(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        let depth = self.stack.len();
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    let full = join(path, &k);
                    if depth == 1 {
                        self.index.top_level.push((k.clone(), line));
                    }
                    self.index.lines.entry(full).or_insert(line);
                    *key = Some(k);
                    None
                }
                Some(k) => Some(join(path, &k)),
            },
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.index.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), line);
            }
            Event::Alias(_) => {
                self.node(None, line);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(None, line) {
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A mapping used as a key: keep the shape, ignore its contents.
                    self.stack.push(Frame::Map {
                        path: "?".into(),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, line).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_lines() {
        let text = "version: 1\nlb:\n  upstreams:\n    - name: a\n      weight: 1\n    - { name: b, weight: 0 }\n  retries: 2\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_of("version"), Some(1));
        assert_eq!(idx.line_of("lb"), Some(2));
        assert_eq!(idx.line_of("lb.upstreams[0].weight"), Some(5));
        assert_eq!(idx.line_of("lb.upstreams[1]"), Some(6));
        assert_eq!(idx.line_of("lb.upstreams[1].weight"), Some(6));
        assert_eq!(idx.line_of("lb.retries"), Some(7));
        // Missing keys fall back to their section.
        assert_eq!(idx.line_of("lb.timeouts.connect"), Some(2));
        let top: Vec<_> = idx
            .top_level_keys()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(top, ["version", "lb"]);
    }
}
