//! The state file: everything a restarted xenstored needs to continue where
//! the last one stopped (`dom0kit xenstored --state FILE --restore`). It is
//! written on request and on SIGTERM, atomically (a temporary file renamed
//! over the old one), and checked whole before it is used: a truncated or
//! inconsistent file is refused, never half-loaded.
//!
//! Holds the tree (values, permissions, children in order, generations),
//! the permissions of the special nodes, the quotas, the features set for
//! domains not yet introduced, and each domain connection: its page and
//! port, features, quotas, target, watches, and the bytes queued both
//! ways (a request half read, replies and events not yet in its ring).
//! Socket connections, with their watches and transactions, end with the
//! process, as with C xenstored; so do domains' open transactions (their
//! commits get `ENOENT`).

use std::collections::HashMap;
use std::path::Path as FsPath;

use xenstore::{Access, Path, Perm, Perms};

use crate::store::{Node, Quotas, Tree};

const MAGIC: &[u8; 16] = b"dom0kit-xs-state";
/// Version 1 had the tree and the special nodes only; it is still read.
const VERSION: u32 = 4;

/// Everything the state file holds besides the tree.
#[derive(Default)]
pub struct State {
    /// Permissions of `@introduceDomain` and `@releaseDomain`.
    pub special: HashMap<String, Perms>,
    /// The quotas new domains get.
    pub quotas: Quotas,
    /// Features set for domains not introduced yet.
    pub pending_features: Vec<(u16, u32)>,
    /// The domain connections.
    pub domains: Vec<DomainState>,
}

/// One domain connection, as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainState {
    /// The domain.
    pub domid: u16,
    /// Its page and port, as `XS_INTRODUCE` gave them.
    pub gfn: u64,
    /// Its port.
    pub port: u32,
    /// Its features.
    pub features: u32,
    /// Its quotas.
    pub quota: Quotas,
    /// Its `SET_TARGET`.
    pub target: Option<u16>,
    /// Its watches.
    pub watches: Vec<WatchState>,
    /// Bytes of a request read from its ring but not whole yet.
    pub input: Vec<u8>,
    /// Replies and events not yet in its ring.
    pub output: Vec<u8>,
}

/// One watch of a domain, as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchState {
    /// The path as resolved (absolute, or `@special`).
    pub path: String,
    /// Its token.
    pub token: String,
    /// Whether it was given relative to the domain's home.
    pub relative: bool,
    /// Its depth, if it has one.
    pub depth: Option<u64>,
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing it failed.
    #[error("state file")]
    Io(#[from] std::io::Error),
    /// It is not a state file of this version, or it is cut short or
    /// inconsistent.
    #[error("state file is damaged: {0}")]
    Damaged(&'static str),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn perms(&mut self, p: &Perms) {
        self.u32(p.entries().len() as u32);
        for e in p.entries() {
            self.u16(e.domid);
            self.u8(match e.access {
                Access::None => 0,
                Access::Read => 1,
                Access::Write => 2,
                Access::Both => 3,
            });
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Damaged("cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, StateError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| StateError::Damaged("name is not text"))
    }
    fn perms(&mut self) -> Result<Perms, StateError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 3 {
            return Err(StateError::Damaged("cut short"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let domid = self.u16()?;
            let access = match self.u8()? {
                0 => Access::None,
                1 => Access::Read,
                2 => Access::Write,
                3 => Access::Both,
                _ => return Err(StateError::Damaged("bad access")),
            };
            entries.push(Perm { domid, access });
        }
        Perms::new(entries).map_err(|_| StateError::Damaged("node without permissions"))
    }
}

fn quotas_out(w: &mut Writer, q: &Quotas) {
    for name in Quotas::NAMES {
        w.u64(q.get(name).unwrap_or(0) as u64);
    }
}

/// The quotas of a file of `version`.
fn quotas_in(r: &mut Reader<'_>, version: u32) -> Result<Quotas, StateError> {
    let mut q = Quotas::DEFAULT;
    // 2 had none past `node-size`, 3 none past `outstanding`.
    let known = match version {
        ..=2 => 7,
        3 => 8,
        _ => Quotas::NAMES.len(),
    };
    for name in &Quotas::NAMES[..known] {
        let v = usize::try_from(r.u64()?).map_err(|_| StateError::Damaged("bad quota"))?;
        q.set(name, v);
    }
    Ok(q)
}

/// The bytes of a state file.
pub fn encode(tree: &Tree, state: &State) -> Vec<u8> {
    let special = &state.special;
    let mut w = Writer(MAGIC.to_vec());
    w.u32(VERSION);
    w.u64(tree.generation());
    let nodes = tree.export();
    w.u64(nodes.len() as u64);
    for (path, n) in nodes {
        w.bytes(path.as_bytes());
        w.bytes(&n.value);
        w.perms(&n.perms);
        w.u32(n.children.len() as u32);
        for c in n.children.iter() {
            w.bytes(c.as_bytes());
        }
        w.u64(n.gen);
        w.u64(n.cgen);
    }
    let mut special: Vec<_> = special.iter().collect();
    special.sort_by(|a, b| a.0.cmp(b.0));
    w.u32(special.len() as u32);
    for (name, p) in special {
        w.bytes(name.as_bytes());
        w.perms(p);
    }
    quotas_out(&mut w, &state.quotas);
    w.u32(state.pending_features.len() as u32);
    for &(d, f) in &state.pending_features {
        w.u16(d);
        w.u32(f);
    }
    w.u32(state.domains.len() as u32);
    for d in &state.domains {
        w.u16(d.domid);
        w.u64(d.gfn);
        w.u32(d.port);
        w.u32(d.features);
        quotas_out(&mut w, &d.quota);
        w.u8(u8::from(d.target.is_some()));
        w.u16(d.target.unwrap_or(0));
        w.u32(d.watches.len() as u32);
        for watch in &d.watches {
            w.bytes(watch.path.as_bytes());
            w.bytes(watch.token.as_bytes());
            w.u8(u8::from(watch.relative));
            w.u8(u8::from(watch.depth.is_some()));
            w.u64(watch.depth.unwrap_or(0));
        }
        w.bytes(&d.input);
        w.bytes(&d.output);
    }
    w.0
}

/// The tree and the rest of a state file's bytes.
pub fn decode(bytes: &[u8]) -> Result<(Tree, State), StateError> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(StateError::Damaged("not a dom0kit xenstored state file"));
    }
    let version = r.u32()?;
    if !(1..=VERSION).contains(&version) {
        return Err(StateError::Damaged("not a dom0kit xenstored state file"));
    }
    let gen = r.u64()?;
    let count = r.u64()?;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let path = r.text()?;
        let value = r.bytes()?.to_vec();
        let perms = r.perms()?;
        let nchildren = r.u32()? as usize;
        if nchildren > r.0.len() / 4 {
            return Err(StateError::Damaged("cut short"));
        }
        let mut children = Vec::with_capacity(nchildren);
        for _ in 0..nchildren {
            children.push(r.text()?);
        }
        let (node_gen, cgen) = (r.u64()?, r.u64()?);
        // What the daemon could never have stored: refused, so that a
        // restored daemon never sends a reply over the protocol's limit.
        if value.len() > abi::xs_wire::XENSTORE_PAYLOAD_MAX
            || perms.to_payload().len() > abi::xs_wire::XENSTORE_PAYLOAD_MAX
        {
            return Err(StateError::Damaged("node too large"));
        }
        let mut names = std::collections::HashSet::new();
        for c in &children {
            if c.is_empty() || c.contains('/') || !names.insert(c.as_str()) {
                return Err(StateError::Damaged("bad child name"));
            }
        }
        nodes.push((
            path,
            Node {
                value,
                perms,
                children: children.into(),
                gen: node_gen,
                cgen,
            },
        ));
    }
    let mut special = HashMap::new();
    for _ in 0..r.u32()? {
        let name = r.text()?;
        if !matches!(name.as_str(), "@introduceDomain" | "@releaseDomain") {
            return Err(StateError::Damaged("unknown special node"));
        }
        special.insert(name, r.perms()?);
    }
    let mut state = State {
        special,
        ..State::default()
    };
    if version >= 2 {
        state.quotas = quotas_in(&mut r, version)?;
        for _ in 0..r.u32()? {
            state.pending_features.push((r.u16()?, r.u32()?));
        }
        let n = r.u32()?;
        if n as usize > r.0.len() / 16 {
            return Err(StateError::Damaged("cut short"));
        }
        for _ in 0..n {
            state.domains.push(domain_in(&mut r, version)?);
        }
    }
    if !r.0.is_empty() {
        return Err(StateError::Damaged("trailing bytes"));
    }
    // The counter must stay ahead of every generation handed out, or a
    // transaction could miss a change.
    let newest = nodes
        .iter()
        .map(|(_, n)| n.gen.max(n.cgen))
        .max()
        .unwrap_or(0);
    let tree = Tree::import(nodes, gen.max(newest)).map_err(StateError::Damaged)?;
    Ok((tree, state))
}

fn domain_in(r: &mut Reader<'_>, version: u32) -> Result<DomainState, StateError> {
    let (domid, gfn, port, features) = (r.u16()?, r.u64()?, r.u32()?, r.u32()?);
    let quota = quotas_in(r, version)?;
    let (has_target, target) = (r.u8()?, r.u16()?);
    let n = r.u32()? as usize;
    if n > r.0.len() / 8 {
        return Err(StateError::Damaged("cut short"));
    }
    let mut watches = Vec::with_capacity(n);
    for _ in 0..n {
        let path = r.text()?;
        let token = r.text()?;
        let (relative, has_depth, depth) = (r.u8()?, r.u8()?, r.u64()?);
        watches.push(WatchState {
            path,
            token,
            relative: relative != 0,
            depth: (has_depth != 0).then_some(depth),
        });
    }
    let input = r.bytes()?.to_vec();
    let output = r.bytes()?.to_vec();
    Ok(DomainState {
        domid,
        gfn,
        port,
        features,
        quota,
        target: (has_target != 0).then_some(target),
        watches,
        input,
        output,
    })
}

/// Writes the state file atomically.
pub fn save(path: &FsPath, tree: &Tree, state: &State) -> Result<(), StateError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&encode(tree, state))?;
    // On disk before it replaces the old file, and the rename on disk
    // too: after a crash there is the old state or the new, never neither.
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a state file.
pub fn load(path: &FsPath) -> Result<(Tree, State), StateError> {
    decode(&std::fs::read(path)?)
}

/// Checks that `path` is a valid node path (for import).
pub(crate) fn valid_path(p: &str) -> bool {
    p == "/" || Path::absolute(p.to_string()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Caller};

    fn sample() -> Tree {
        let mut t = Tree::new();
        let c = Caller::DOM0;
        for (p, v) in [
            ("/a/b", &b"1"[..]),
            ("/a/c", b"bin\0ary"),
            ("/local/domain/3/name", b"guest"),
        ] {
            store::write(&mut t, &c, &Path::absolute(p.into()).unwrap(), v).unwrap();
        }
        let perms = Perms::parse([&b"n3"[..], b"r0"]).unwrap();
        store::set_perms(
            &mut t,
            &c,
            &Path::absolute("/local/domain/3".into()).unwrap(),
            perms,
        )
        .unwrap();
        t
    }

    #[test]
    fn a_tree_survives_the_round_trip() {
        let t = sample();
        let mut special = HashMap::new();
        special.insert(
            "@releaseDomain".to_string(),
            Perms::parse([&b"r0"[..]]).unwrap(),
        );
        let mut quotas = Quotas::DEFAULT;
        quotas.set("nodes", 50);
        quotas.set("watches", 0);
        let domain = DomainState {
            domid: 3,
            gfn: 77,
            port: 9,
            features: 6,
            quota: quotas,
            target: Some(4),
            watches: vec![WatchState {
                path: "/local/domain/3/x".into(),
                token: "t".into(),
                relative: true,
                depth: Some(2),
            }],
            input: vec![2, 0, 0],
            output: b"some reply".to_vec(),
        };
        let state = State {
            special: special.clone(),
            quotas,
            pending_features: vec![(8, 2)],
            domains: vec![domain.clone()],
        };
        let (tree, back) = decode(&encode(&t, &state)).unwrap();
        assert_eq!(tree.export(), t.export());
        assert_eq!(tree.generation(), t.generation());
        assert_eq!(back.special, special);
        assert_eq!(back.quotas, quotas);
        assert_eq!(back.pending_features, [(8, 2)]);
        assert_eq!(back.domains, [domain]);
    }

    #[test]
    fn duplicate_children_and_a_stale_counter_are_caught() {
        let root = |children: Vec<&str>| Node {
            value: Vec::new(),
            perms: Perms::owned_by(0),
            children: std::sync::Arc::new(children.into_iter().map(String::from).collect()),
            gen: 9,
            cgen: 9,
        };
        let leaf = Node {
            children: Default::default(),
            ..root(vec![])
        };
        let dup = Tree::import(
            vec![
                ("/".into(), root(vec!["a", "a"])),
                ("/a".into(), leaf.clone()),
            ],
            1,
        )
        .unwrap();
        assert!(matches!(
            decode(&encode(&dup, &State::default())),
            Err(StateError::Damaged(_))
        ));
        // A counter behind the nodes' generations is moved ahead of them.
        let ok = Tree::import(vec![("/".into(), root(vec!["a"])), ("/a".into(), leaf)], 1).unwrap();
        let (back, _) = decode(&encode(&ok, &State::default())).unwrap();
        assert!(back.generation() >= 9);
    }

    #[test]
    fn a_damaged_file_is_refused_whole() {
        let bytes = encode(&sample(), &State::default());
        for cut in [0, 10, 16, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(decode(&bad).is_err());
    }
}
