//! Node permissions: a list of `<access><domid>` entries (`n`, `r`, `w`,
//! `b`); the first names the owner and the access of every domain not
//! listed.

use crate::XsError;

/// What a domain may do with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Nothing.
    None,
    /// Read.
    Read,
    /// Write.
    Write,
    /// Read and write.
    Both,
}

impl Access {
    /// Whether it allows reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether it allows writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }

    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parses `b0`, `r3`, ...
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&first, digits) = s.split_first().ok_or(XsError::Inval)?;
        let access = match first {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(XsError::Inval),
        };
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(XsError::Inval);
        }
        let n: u32 = std::str::from_utf8(digits)
            .map_err(|_| XsError::Inval)?
            .parse()
            .map_err(|_| XsError::Inval)?;
        let domid = u16::try_from(n).map_err(|_| XsError::Inval)?;
        Ok(Perm { domid, access })
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permissions: never empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owned by `owner`, no access for anyone else (`n<owner>`).
    pub fn owned_by(owner: u16) -> Perms {
        Perms(vec![Perm {
            domid: owner,
            access: Access::None,
        }])
    }

    /// From entries; refuses an empty list.
    pub fn new(entries: Vec<Perm>) -> Result<Perms, XsError> {
        if entries.is_empty() {
            return Err(XsError::Inval);
        }
        Ok(Perms(entries))
    }

    /// Parses the strings of a `SET_PERMS` payload after the path.
    pub fn parse<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Perms, XsError> {
        Perms::new(
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(Perm::parse)
                .collect::<Result<_, _>>()?,
        )
    }

    /// The owner.
    pub fn owner(&self) -> u16 {
        self.0[0].domid
    }

    /// The entries.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// These permissions once `domid` is gone, as C xenstored's
    /// `remove_domid_from_perm`: dom0 owns what it owned, and its other
    /// entries go.
    pub fn without(&self, domid: u16) -> Perms {
        let mut owner = self.0[0];
        if owner.domid == domid {
            owner.domid = 0;
        }
        let others = self.0[1..].iter().filter(|e| e.domid != domid).copied();
        Perms(std::iter::once(owner).chain(others).collect())
    }

    /// What `domid` may do by these entries alone (no dom0 or target
    /// privileges): the owner may do everything, a listed domain what its
    /// entry says, anyone else what the first entry says.
    pub fn access_of(&self, domid: u16) -> Access {
        if domid == self.owner() {
            return Access::Both;
        }
        self.0
            .iter()
            .skip(1)
            .find(|p| p.domid == domid)
            .map_or(self.0[0].access, |p| p.access)
    }

    /// The `GET_PERMS` payload: each entry followed by a nul.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in &self.0 {
            v.extend_from_slice(p.to_string().as_bytes());
            v.push(0);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_print() {
        let p = Perms::parse([&b"n0"[..], b"r3", b"b5"]).unwrap();
        assert_eq!(p.to_payload(), b"n0\0r3\0b5\0");
        assert_eq!(p.owner(), 0);
        for bad in [&b""[..], b"x0", b"r", b"r-1", b"r65536", b"r1a", b"r123456"] {
            assert!(Perm::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Perms::parse([&b""[..]]).is_err(), "no entries");
    }

    #[test]
    fn access_follows_owner_then_entry_then_default() {
        let p = Perms::parse([&b"r7"[..], b"n3", b"w4"]).unwrap();
        assert_eq!(p.access_of(7), Access::Both, "owner");
        assert_eq!(p.access_of(3), Access::None);
        assert_eq!(p.access_of(4), Access::Write);
        assert_eq!(p.access_of(9), Access::Read, "default is the first entry's");
    }
}
