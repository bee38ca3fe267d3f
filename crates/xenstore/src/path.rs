//! Xenstore paths: absolute (`/local/domain/3/device`), relative to the
//! caller's home (`device` from domain 3 means the same), or special
//! (`@introduceDomain`, `@releaseDomain`), with Xen's rules: characters
//! `[A-Za-z0-9_@/-]`, no empty component, no trailing slash but for the
//! root, at most `XENSTORE_ABS_PATH_MAX` bytes. The daemon's path-length
//! quota for domains ([`Path::within_domain_quota`]) is applied by it.

use abi::xs_wire::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

use crate::XsError;

/// A valid, canonical path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(String);

/// The home directory of a domain, to which relative paths are relative.
pub fn domain_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

fn valid_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

impl Path {
    /// The root.
    pub fn root() -> Path {
        Path("/".into())
    }

    /// Parses a path from a request of domain `caller` (socket clients are
    /// dom0). Special paths are allowed only where `special_ok` (watches,
    /// permissions of the special nodes).
    pub fn parse(raw: &[u8], caller: u16, special_ok: bool) -> Result<Path, XsError> {
        let raw = std::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
        if raw.is_empty() || raw.len() > XENSTORE_ABS_PATH_MAX {
            return Err(XsError::Inval);
        }
        if raw.starts_with('@') {
            return if special_ok && valid_chars(raw) {
                Ok(Path(raw.into()))
            } else {
                Err(XsError::Inval)
            };
        }
        let full = if raw.starts_with('/') {
            raw.to_string()
        } else {
            format!("{}/{raw}", domain_path(caller))
        };
        Path::absolute(full)
    }

    /// Checks an absolute path.
    pub fn absolute(full: String) -> Result<Path, XsError> {
        if !full.starts_with('/') || full.len() > XENSTORE_ABS_PATH_MAX || !valid_chars(&full) {
            return Err(XsError::Inval);
        }
        if full.contains("//") || (full.len() > 1 && full.ends_with('/')) {
            return Err(XsError::Inval);
        }
        Ok(Path(full))
    }

    /// The length C xenstored's path-length quota counts for an
    /// unprivileged domain: the part below `/local/domain/<id>/` if the path
    /// has one, else the whole path (limit `XENSTORE_REL_PATH_MAX`).
    pub fn quota_len(&self) -> usize {
        below_home(&self.0).map_or(self.0.len(), str::len)
    }

    /// Whether an unprivileged domain may use the path (its quota length
    /// is within `XENSTORE_REL_PATH_MAX`).
    pub fn within_domain_quota(&self) -> bool {
        self.quota_len() <= XENSTORE_REL_PATH_MAX
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is a special watch path (`@...`).
    pub fn is_special(&self) -> bool {
        self.0.starts_with('@')
    }

    /// Whether it is the root.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The parent, `None` for the root and special paths.
    pub fn parent(&self) -> Option<Path> {
        if self.is_root() || self.is_special() {
            return None;
        }
        let i = self.0.rfind('/')?;
        Some(Path(if i == 0 {
            "/".into()
        } else {
            self.0[..i].into()
        }))
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> Result<Path, XsError> {
        if self.is_root() {
            Path::absolute(format!("/{name}"))
        } else {
            Path::absolute(format!("{}/{name}", self.0))
        }
    }

    /// Whether `self` is `other` or lies below it (xenstore.txt's "child").
    pub fn is_child_of(&self, other: &Path) -> bool {
        if other.is_root() {
            return !self.is_special();
        }
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// How many levels `self` lies below `ancestor` (0 for itself), if it is
    /// a child of it.
    pub fn depth_below(&self, ancestor: &Path) -> Option<usize> {
        if !self.is_child_of(ancestor) {
            return None;
        }
        let rest = if ancestor.is_root() {
            &self.0[1..]
        } else {
            &self.0[ancestor.0.len()..]
        };
        Some(rest.split('/').filter(|c| !c.is_empty()).count())
    }

    /// The path relative to `base` (for events of relative watches), if it
    /// lies strictly below it.
    pub fn relative_to(&self, base: &str) -> Option<&str> {
        self.0.strip_prefix(base)?.strip_prefix('/')
    }
}

/// The part of `/local/domain/<id>/rest` after the home, if it has one.
fn below_home(p: &str) -> Option<&str> {
    let rest = p.strip_prefix("/local/domain/")?;
    let (id, below) = rest.split_once('/')?;
    (!id.is_empty() && id.len() <= 5 && id.bytes().all(|b| b.is_ascii_digit())).then_some(below)
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Path, XsError> {
        Path::parse(s.as_bytes(), 3, false)
    }

    #[test]
    fn relative_paths_are_below_the_callers_home() {
        assert_eq!(
            p("device/vbd").unwrap().as_str(),
            "/local/domain/3/device/vbd"
        );
        assert_eq!(p("/tool").unwrap().as_str(), "/tool");
        assert_eq!(p("/").unwrap(), Path::root());
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "", "//", "/a//b", "/a/", "/a b", "/a\u{e9}", "a/", "@x", "/a/./b",
        ] {
            assert_eq!(p(bad), Err(XsError::Inval), "{bad:?}");
        }
        assert_eq!(Path::parse(b"/a\0b", 0, false), Err(XsError::Inval));
        assert!(Path::parse(b"@releaseDomain", 0, true)
            .unwrap()
            .is_special());
    }

    #[test]
    fn length_limits_follow_xs_wire() {
        let long = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert!(p(&long).is_ok());
        assert!(p(&format!("{long}b")).is_err());
        let home = format!("/local/domain/3/{}", "b".repeat(XENSTORE_REL_PATH_MAX));
        assert!(p(&home).unwrap().within_domain_quota());
        let over = p(&format!("{home}c")).unwrap();
        assert!(
            !over.within_domain_quota(),
            "over the relative limit below a home"
        );
        let outside = p(&format!("/x/{}", "c".repeat(XENSTORE_REL_PATH_MAX))).unwrap();
        assert!(
            !outside.within_domain_quota(),
            "outside a home the whole path counts"
        );
    }

    #[test]
    fn family_relations() {
        let a = p("/a/b/c").unwrap();
        assert!(a.is_child_of(&p("/a/b").unwrap()));
        assert!(a.is_child_of(&a));
        assert!(!p("/a/bc").unwrap().is_child_of(&p("/a/b").unwrap()));
        assert_eq!(a.depth_below(&Path::root()), Some(3));
        assert_eq!(a.depth_below(&p("/a").unwrap()), Some(2));
        assert_eq!(a.parent().unwrap().as_str(), "/a/b");
        assert_eq!(p("/a").unwrap().parent().unwrap(), Path::root());
        assert_eq!(a.name(), "c");
        assert_eq!(a.relative_to("/a"), Some("b/c"));
    }
}
