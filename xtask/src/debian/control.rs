//! Debian control data as apt prints it (`apt-cache show`, `apt-cache policy`), parsed without
//! effects: stanzas of `Field: value` lines and the `Depends` relation syntax.

use std::collections::BTreeMap;

/// One stanza: field names as written, values with continuation lines joined by `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    pub fields: BTreeMap<String, String>,
}

impl Stanza {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// The stanzas of `text` (blank lines separate them).
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            last = None;
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(value) = last.as_ref().and_then(|key| current.fields.get_mut(key)) {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current
                .fields
                .insert(key.to_owned(), value.trim().to_owned());
            last = Some(key.to_owned());
        }
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

/// A `Depends`/`Pre-Depends` value as alternatives of package names: `a (>= 1) | b, c:any`
/// gives `[[a, b], [c]]`. Version constraints are dropped: the lock pins exact versions, and
/// apt's candidate is what `cargo xtask lock` records.
pub fn parse_relations(value: &str) -> Vec<Vec<String>> {
    value
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alternative| {
                    let name = alternative.split_whitespace().next()?;
                    let name = name.split(':').next().unwrap_or(name);
                    (!name.is_empty()).then(|| name.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty())
        .collect()
}

/// The `Candidate:` version of `apt-cache policy PKG` output; None for `(none)` or no line.
pub fn candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|version| !version.is_empty() && *version != "(none)")
        .map(str::to_owned)
}

/// Whether `apt-cache policy` (no argument) names a source of `release` (`n=bookworm`).
pub fn serves_release(policy: &str, release: &str) -> bool {
    let wanted = format!("n={release}");
    policy
        .lines()
        .filter(|line| line.trim_start().starts_with("release "))
        .any(|line| line.split(',').any(|field| field.trim() == wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_and_relations() {
        let text = "Package: nginx\nVersion: 1.22.1-9\nDepends: libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, perl:any\nDescription: x\n more\n\nPackage: b\n";
        let stanzas = parse_stanzas(text);
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("Version"), Some("1.22.1-9"));
        assert_eq!(stanzas[0].get("Description"), Some("x\nmore"));
        let depends = parse_relations(stanzas[0].get("Depends").unwrap_or_default());
        assert_eq!(
            depends,
            [
                vec!["libc6".to_owned()],
                vec!["debconf".to_owned(), "debconf-2.0".to_owned()],
                vec!["perl".to_owned()]
            ]
        );
    }

    #[test]
    fn candidate_and_release() {
        let policy = "nginx:\n  Installed: (none)\n  Candidate: 1.22.1-9+deb12u12\n";
        assert_eq!(candidate(policy).as_deref(), Some("1.22.1-9+deb12u12"));
        assert_eq!(candidate("x:\n  Candidate: (none)\n"), None);
        let sources = " 500 http://deb.debian.org/debian bookworm/main amd64 Packages\n     release v=12.12,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64\n";
        assert!(serves_release(sources, "bookworm"));
        assert!(!serves_release(sources, "trixie"));
    }
}
