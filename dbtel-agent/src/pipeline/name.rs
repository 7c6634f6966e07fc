//! A span's name. Most come from a statement text's facts, alike for every
//! execution of it: those are shared, not copied per span.

use std::{fmt, ops::Deref, sync::Arc};

#[derive(Clone)]
pub enum Name {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Default for Name {
    fn default() -> Self {
        Name::Static("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Shared(s) => s,
            Name::Owned(s) => s,
        }
    }
}

impl Name {
    pub fn as_str(&self) -> &str {
        self
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Self {
        Name::Static(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::Owned(s)
    }
}

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Self {
        Name::Shared(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        match n {
            Name::Owned(s) => s,
            other => other.as_str().to_string(),
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_and_compares_as_its_text() {
        let shared: Name = Arc::<str>::from("SELECT items").into();
        let owned: Name = String::from("SELECT items").into();
        let fixed: Name = "SELECT items".into();
        assert_eq!(shared, owned);
        assert_eq!(owned, fixed);
        assert_eq!(fixed, "SELECT items");
        assert_eq!(
            format!("{shared} {shared:?}"),
            "SELECT items \"SELECT items\""
        );
        assert!(Name::default().is_empty());
    }
}
