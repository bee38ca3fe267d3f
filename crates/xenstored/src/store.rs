//! The tree: nodes with a value, permissions and children, and the
//! operations of `xenstore.txt` on it, written once over [`Nodes`] so that
//! they run the same on the committed tree and inside a transaction.
//!
//! Every node carries a generation, `gen`, that changes with its value,
//! permissions, existence or set of children (the children are part of the
//! node, as in C xenstored), and `cgen`, that changes with its children
//! alone (`DIRECTORY_PART`'s count). A transaction remembers the
//! generations of what it touched and conflicts only if one of those
//! changed, so transactions below different existing parents both commit.

use std::collections::HashMap;
use std::sync::Arc;

use xenstore::{Access, Path, Perms, XsError};

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its value.
    pub value: Vec<u8>,
    /// Its permissions.
    pub perms: Perms,
    /// Names of its children, oldest first (C xenstored lists them in the
    /// order they were created). Shared, so that copying a node (every
    /// lookup does) does not copy thousands of names.
    pub children: Arc<Vec<String>>,
    /// Generation of its value, permissions and existence.
    pub gen: u64,
    /// Generation of its set of children.
    pub cgen: u64,
}

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's domain.
    pub domid: u16,
    /// dom0, the socket, or a domain with `SET_TARGET` privilege over
    /// everything it touches: no permission checks.
    pub privileged: bool,
    /// The domain this one acts for (`SET_TARGET`), if any.
    pub target: Option<u16>,
    /// The quotas it meets if unprivileged.
    pub quota: Quotas,
}

/// The quotas an unprivileged domain meets, by the names of Xen's
/// `GET_QUOTA`/`SET_QUOTA` (`docs/misc/xenstore.txt`), with C xenstored's
/// defaults. Each is checked as C 4.17 checks it: see where it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// `nodes`: nodes the domain may own.
    pub nodes: usize,
    /// `watches`: watches one connection may have.
    pub watches: usize,
    /// `transactions`: transactions one connection may have open.
    pub transactions: usize,
    /// `transaction-nodes`: nodes one transaction may touch.
    pub transaction_nodes: usize,
    /// `node-permissions`: permission entries one `SET_PERMS` may give.
    pub node_permissions: usize,
    /// `path-max`: path length, counted below the domain's home.
    pub path_max: usize,
    /// `node-size`: a node's size as C counts it (must stay below).
    pub node_size: usize,
    /// `outstanding`: requests of the domain not yet done (their reply
    /// and the watch events they caused not yet delivered) beyond which
    /// its ring is not read.
    pub outstanding: usize,
    /// `memory`: bytes the domain's nodes, watches, transactions and
    /// queued requests and replies may take; a request that would go past
    /// it is `ENOMEM`, and a domain at it is not read from.
    pub memory: usize,
}

impl Quotas {
    /// C xenstored's defaults.
    pub const DEFAULT: Quotas = Quotas {
        nodes: NODE_COUNT_QUOTA,
        watches: 128,
        transactions: 10,
        transaction_nodes: 1024,
        node_permissions: NODE_PERMS_QUOTA,
        path_max: abi::xs_wire::XENSTORE_REL_PATH_MAX,
        node_size: NODE_SIZE_QUOTA,
        outstanding: 20,
        memory: MEMORY_QUOTA,
    };

    /// The names `GET_QUOTA` lists, in its order.
    pub const NAMES: [&'static str; 9] = [
        "nodes",
        "watches",
        "transactions",
        "transaction-nodes",
        "node-permissions",
        "path-max",
        "node-size",
        "outstanding",
        "memory",
    ];

    fn slot(&mut self, name: &str) -> Option<&mut usize> {
        Some(match name {
            "nodes" => &mut self.nodes,
            "watches" => &mut self.watches,
            "transactions" => &mut self.transactions,
            "transaction-nodes" => &mut self.transaction_nodes,
            "node-permissions" => &mut self.node_permissions,
            "path-max" => &mut self.path_max,
            "node-size" => &mut self.node_size,
            "outstanding" => &mut self.outstanding,
            "memory" => &mut self.memory,
            _ => return None,
        })
    }

    /// The quota `name`, if it is one (0: not checked).
    pub fn get(&self, name: &str) -> Option<usize> {
        let v = *self.clone().slot(name)?;
        Some(if v == usize::MAX { 0 } else { v })
    }

    /// Sets the quota `name` (0: not checked); false if there is none.
    pub fn set(&mut self, name: &str, value: usize) -> bool {
        match self.slot(name) {
            Some(s) => {
                *s = if value == 0 { usize::MAX } else { value };
                true
            }
            None => false,
        }
    }
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas::DEFAULT
    }
}

impl Caller {
    /// A dom0 caller (the socket).
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
        quota: Quotas::DEFAULT,
    };

    /// An unprivileged domain with the default quotas.
    pub const fn domain(domid: u16) -> Caller {
        Caller {
            domid,
            privileged: false,
            target: None,
            quota: Quotas::DEFAULT,
        }
    }

    /// What the caller may do with a node of `perms` (C xenstored's
    /// `perm_for_conn`).
    pub fn access(&self, perms: &Perms) -> Access {
        let me = |d: u16| d == self.domid || Some(d) == self.target;
        if self.privileged || me(perms.owner()) {
            return Access::Both;
        }
        perms
            .entries()
            .iter()
            .skip(1)
            .find(|p| me(p.domid))
            .map_or(perms.entries()[0].access, |p| p.access)
    }
}

/// A change that may fire watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The node that changed.
    pub path: Path,
    /// Only watches on exactly this path fire (a node removed with an
    /// ancestor); otherwise every watch at or above it.
    pub exact: bool,
    /// The node's permissions at the change (who may see the event).
    pub perms: Perms,
}

/// Where nodes are read and written: the tree itself, or a transaction's
/// view of it.
pub trait Nodes {
    /// The node at `path`.
    fn get(&mut self, path: &str) -> Option<Node>;
    /// The node's children, as a directory listing sees them.
    fn list(&mut self, path: &str) -> Option<Node> {
        self.get(path)
    }
    /// Sets (`Some`) or removes (`None`) the node at `path`.
    fn set(&mut self, path: &str, node: Option<Node>);
    /// Changes the children of the node at `path` in place and gives it
    /// generation `gen` (no-op if it does not exist). The default copies
    /// the node; the tree does it in place.
    fn edit_children(&mut self, path: &str, gen: u64, f: &mut dyn FnMut(&mut Vec<String>)) {
        if let Some(mut node) = self.get(path) {
            f(Arc::make_mut(&mut node.children));
            node.gen = gen;
            node.cgen = gen;
            self.set(path, Some(node));
        }
    }
    /// A new generation number.
    fn next_gen(&mut self) -> u64;
    /// What the node-count quota compares with [`NODE_COUNT_QUOTA`] before
    /// `domid` makes `k` new nodes (`None`: not checked here). The tree:
    /// what the domain owns plus `k - 1` (C checks before each node it
    /// makes); a transaction: what the domain owns outside it (C counts a
    /// transaction's nodes at commit).
    fn quota_nodes(&self, domid: u16, k: usize) -> Option<usize>;
}

fn check(caller: &Caller, node: &Node, want: Access) -> Result<(), XsError> {
    let have = caller.access(&node.perms);
    let ok = match want {
        Access::Read => have.can_read(),
        Access::Write => have.can_write(),
        Access::Both => have.can_read() && have.can_write(),
        Access::None => true,
    };
    if ok {
        Ok(())
    } else {
        Err(XsError::Acces)
    }
}

/// The error for a node that does not exist, as C xenstored's
/// `errno_from_parents` gives it: `EACCES` if the caller may not read the
/// nearest ancestor that exists, else `ENOENT`. Looking up the ancestors is
/// itself a read (a transaction conflicts if they change).
fn missing(n: &mut impl Nodes, caller: &Caller, path: &Path) -> XsError {
    let mut p = path.parent();
    while let Some(at) = p {
        if let Some(node) = n.get(at.as_str()) {
            return match check(caller, &node, Access::Read) {
                Ok(()) => XsError::NoEnt,
                Err(e) => e,
            };
        }
        p = at.parent();
    }
    XsError::NoEnt
}

/// `XS_READ`.
pub fn read(n: &mut impl Nodes, caller: &Caller, path: &Path) -> Result<Vec<u8>, XsError> {
    let Some(node) = n.get(path.as_str()) else {
        return Err(missing(n, caller, path));
    };
    check(caller, &node, Access::Read)?;
    Ok(node.value)
}

/// `XS_DIRECTORY`: the children's names.
pub fn directory(
    n: &mut impl Nodes,
    caller: &Caller,
    path: &Path,
) -> Result<(Vec<String>, u64), XsError> {
    let Some(node) = n.list(path.as_str()) else {
        return Err(missing(n, caller, path));
    };
    check(caller, &node, Access::Read)?;
    Ok((node.children.to_vec(), node.cgen))
}

/// `XS_GET_PERMS`.
pub fn get_perms(n: &mut impl Nodes, caller: &Caller, path: &Path) -> Result<Perms, XsError> {
    let Some(node) = n.get(path.as_str()) else {
        return Err(missing(n, caller, path));
    };
    check(caller, &node, Access::Read)?;
    Ok(node.perms)
}

/// The size an unprivileged caller's node must stay below (C xenstored's
/// node-size quota, `-S`, default 2048; C 4.17 refuses a node of exactly
/// this size, with `ENOSPC`). dom0 is not limited.
pub const NODE_SIZE_QUOTA: usize = 2048;
/// Nodes an unprivileged domain may own (C's `quota-nb-entry-per-domain`,
/// default 1000); making one more is `ENOSPC`.
pub const NODE_COUNT_QUOTA: usize = 1000;
/// The most permission entries (owner included) an unprivileged caller may
/// set on a node (C's `quota-permissions`, default 5); over it, `ENOSPC`.
pub const NODE_PERMS_QUOTA: usize = 5;

/// A node's size as C xenstored counts it against [`NODE_SIZE_QUOTA`]: its
/// record header (24 bytes), 8 bytes per permission entry, the value and
/// the children's names, each with its NUL. The children count: a node
/// with many children is a big node.
fn node_size(value: usize, perms: &Perms, children: &[String]) -> usize {
    24 + 8 * perms.entries().len() + value + children.iter().map(|c| c.len() + 1).sum::<usize>()
}

/// `ENOSPC` if an unprivileged caller's node would be `size()` bytes or
/// more; the size (a walk over the children) is computed only for them.
fn within_quota(caller: &Caller, size: impl FnOnce() -> usize) -> Result<(), XsError> {
    if !caller.privileged && size() >= caller.quota.node_size {
        return Err(XsError::NoSpc);
    }
    Ok(())
}

/// Creates `path` and any missing parents with empty values; returns the new
/// node's permissions. New nodes take their parent's permissions; an
/// unprivileged caller owns what it creates. As in C xenstored, only the
/// node asked for fires watches, not the parents made on the way. All or
/// nothing: access and quotas are checked before anything is made.
fn create(
    n: &mut impl Nodes,
    caller: &Caller,
    path: &Path,
    value: Vec<u8>,
) -> Result<Perms, XsError> {
    // The nodes to make, deepest first, and the nearest one that exists.
    let mut make = vec![path.clone()];
    let top = loop {
        let at = make.last().and_then(Path::parent).ok_or(XsError::Inval)?;
        match n.get(at.as_str()) {
            Some(node) => break node,
            None => make.push(at),
        }
    };
    check(caller, &top, Access::Write)?;
    let mut perms = top.perms.clone();
    if !caller.privileged {
        let mut entries = perms.entries().to_vec();
        entries[0].domid = caller.domid;
        perms = Perms::new(entries)?;
        // The node that exists gains a child; each new parent holds one.
        let below = |i: usize| make[i].name().len() + 1;
        within_quota(caller, || {
            node_size(top.value.len(), &top.perms, &top.children) + below(make.len() - 1)
        })?;
        within_quota(caller, || node_size(value.len(), &perms, &[]))?;
        for i in 1..make.len() {
            within_quota(caller, || node_size(0, &perms, &[]) + below(i - 1))?;
        }
        if n.quota_nodes(caller.domid, make.len())
            .is_some_and(|c| c >= caller.quota.nodes)
        {
            return Err(XsError::NoSpc);
        }
    }
    let mut value = Some(value);
    for (i, p) in make.iter().enumerate().rev() {
        let gen = n.next_gen();
        n.set(
            p.as_str(),
            Some(Node {
                value: if i == 0 {
                    value.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                perms: perms.clone(),
                children: Arc::default(),
                gen,
                cgen: gen,
            }),
        );
        // The children are part of the parent, as in C xenstored: a
        // transaction that looked at the parent conflicts with a new child.
        let parent = p.parent().ok_or(XsError::Inval)?;
        let gen = n.next_gen();
        n.edit_children(parent.as_str(), gen, &mut |c| c.push(p.name().to_string()));
    }
    Ok(perms)
}

/// `XS_WRITE`: sets the value, creating the node and its parents.
pub fn write(
    n: &mut impl Nodes,
    caller: &Caller,
    path: &Path,
    value: &[u8],
) -> Result<Vec<Change>, XsError> {
    let mut out = Vec::new();
    match n.get(path.as_str()) {
        Some(mut node) => {
            check(caller, &node, Access::Write)?;
            within_quota(caller, || {
                node_size(value.len(), &node.perms, &node.children)
            })?;
            node.value = value.to_vec();
            node.gen = n.next_gen();
            out.push(Change {
                path: path.clone(),
                exact: false,
                perms: node.perms.clone(),
            });
            n.set(path.as_str(), Some(node));
        }
        None => {
            let perms = create(n, caller, path, value.to_vec())?;
            out.push(Change {
                path: path.clone(),
                exact: false,
                perms,
            });
        }
    }
    Ok(out)
}

/// `XS_MKDIR`: creates the node if missing; an existing one is left as is.
pub fn mkdir(n: &mut impl Nodes, caller: &Caller, path: &Path) -> Result<Vec<Change>, XsError> {
    let mut out = Vec::new();
    match n.get(path.as_str()) {
        Some(node) => check(caller, &node, Access::Write)?,
        None => {
            let perms = create(n, caller, path, Vec::new())?;
            out.push(Change {
                path: path.clone(),
                exact: false,
                perms,
            });
        }
    }
    Ok(out)
}

/// Removes `path`'s descendants, deepest first, each an exact change (as C
/// xenstored's `delete_node` fires them), then `path` itself.
fn remove_subtree(n: &mut impl Nodes, path: &Path, out: &mut Vec<Change>) {
    let Some(node) = n.get(path.as_str()) else {
        return;
    };
    for c in node.children.iter() {
        let Ok(child) = path.join(c) else { continue };
        if let Some(cn) = n.get(child.as_str()) {
            remove_subtree(n, &child, out);
            out.push(Change {
                path: child,
                exact: true,
                perms: cn.perms,
            });
        }
    }
    n.set(path.as_str(), None);
}

/// `XS_RM`: removes the node and everything below it. Removing what does
/// not exist is fine if its parent exists.
pub fn rm(n: &mut impl Nodes, caller: &Caller, path: &Path) -> Result<Vec<Change>, XsError> {
    let parent = path.parent().ok_or(XsError::Inval)?;
    let Some(node) = n.get(path.as_str()) else {
        // Fine if the parent exists (and, as C xenstored looks, readable).
        let e = missing(n, caller, path);
        return match n.get(parent.as_str()) {
            Some(_) if e == XsError::NoEnt => Ok(Vec::new()),
            Some(_) => Err(e),
            None => Err(XsError::NoEnt),
        };
    };
    check(caller, &node, Access::Write)?;
    let mut out = Vec::new();
    remove_subtree(n, path, &mut out);
    let gen = n.next_gen();
    n.edit_children(parent.as_str(), gen, &mut |c| {
        c.retain(|c| c != path.name())
    });
    out.push(Change {
        path: path.clone(),
        exact: false,
        perms: node.perms,
    });
    Ok(out)
}

/// `XS_SET_PERMS`. Only a privileged caller may give a node away.
pub fn set_perms(
    n: &mut impl Nodes,
    caller: &Caller,
    path: &Path,
    perms: Perms,
) -> Result<Vec<Change>, XsError> {
    let Some(mut node) = n.get(path.as_str()) else {
        return Err(missing(n, caller, path));
    };
    // Permissions belong to the owner: write access is not enough
    // (xenstore.txt; C xenstored asks for write and owner).
    let owner = node.perms.owner();
    if !caller.privileged && owner != caller.domid && Some(owner) != caller.target {
        return Err(XsError::Acces);
    }
    check(caller, &node, Access::Write)?;
    if !caller.privileged && perms.owner() != node.perms.owner() {
        return Err(XsError::Perm);
    }
    within_quota(caller, || {
        node_size(node.value.len(), &perms, &node.children)
    })?;
    node.perms = perms.clone();
    node.gen = n.next_gen();
    n.set(path.as_str(), Some(node));
    Ok(vec![Change {
        path: path.clone(),
        exact: false,
        perms,
    }])
}

/// C xenstored's hard memory quota (`quota_memory_per_domain_hard`).
pub const MEMORY_QUOTA: usize = 2 * 1024 * 1024 + 512 * 1024;

/// The bytes node `path` takes, as the memory quota counts them: its
/// path, value and permission entries. (Its children's names are counted
/// in their own paths, so that adding a child costs no walk of the list.)
pub fn footprint(path: &str, node: &Node) -> usize {
    path.len() + node.value.len() + node.perms.entries().len() * 4
}

/// The committed tree.
pub struct Tree {
    nodes: HashMap<String, Node>,
    gen: u64,
    /// Nodes each domain owns (for the node-count quota).
    owned: HashMap<u16, usize>,
    /// Bytes of the nodes each domain owns (for the memory quota).
    owned_bytes: HashMap<u16, usize>,
}

impl Tree {
    /// The tree a fresh C xenstored has: `/` and `/tool/xenstored`, owned by
    /// dom0 with no access for others.
    pub fn new() -> Tree {
        let mut t = Tree {
            nodes: HashMap::new(),
            gen: 0,
            owned: HashMap::from([(0, 1)]),
            owned_bytes: HashMap::new(),
        };
        let root = Node {
            value: Vec::new(),
            perms: Perms::owned_by(0),
            children: Arc::default(),
            gen: 0,
            cgen: 0,
        };
        t.nodes.insert("/".into(), root);
        for p in ["/tool", "/tool/xenstored"] {
            let path = Path::absolute(p.into()).unwrap_or_else(|_| Path::root());
            let _ = mkdir(&mut t, &Caller::DOM0, &path);
        }
        t
    }

    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is left (never: the root cannot go).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The generation counter.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The topmost nodes `domid` owns (none of them below another), in
    /// tree order: what goes when the domain does.
    pub fn owned_by(&self, domid: u16) -> Vec<Path> {
        let mut out = Vec::new();
        let mut stack = vec![Path::root()];
        while let Some(p) = stack.pop() {
            let Some(n) = self.nodes.get(p.as_str()) else {
                continue;
            };
            if !p.is_root() && n.perms.owner() == domid {
                out.push(p);
                continue;
            }
            for c in n.children.iter().rev() {
                if let Ok(child) = p.join(c) {
                    stack.push(child);
                }
            }
        }
        out
    }

    /// Every node, parents before children, children in their order.
    pub fn export(&self) -> Vec<(String, Node)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec!["/".to_string()];
        while let Some(p) = stack.pop() {
            let Some(n) = self.nodes.get(&p) else {
                continue;
            };
            for c in n.children.iter().rev() {
                stack.push(if p == "/" {
                    format!("/{c}")
                } else {
                    format!("{p}/{c}")
                });
            }
            out.push((p, n.clone()));
        }
        out
    }

    /// A tree of `nodes` (as [`export`](Self::export) gives them), if they
    /// form one: valid paths, a root, every node listed by its parent and
    /// every child present.
    pub fn import(nodes: Vec<(String, Node)>, gen: u64) -> Result<Tree, &'static str> {
        let mut map = HashMap::with_capacity(nodes.len());
        for (p, n) in nodes {
            if !crate::state::valid_path(&p) {
                return Err("bad node path");
            }
            if map.insert(p, n).is_some() {
                return Err("node listed twice");
            }
        }
        if !map.contains_key("/") {
            return Err("no root");
        }
        for (p, n) in &map {
            for c in n.children.iter() {
                let child = if p == "/" {
                    format!("/{c}")
                } else {
                    format!("{p}/{c}")
                };
                if !map.contains_key(&child) {
                    return Err("a child is missing");
                }
            }
            if p != "/" {
                let (parent, name) = match p.rsplit_once('/') {
                    Some(("", name)) => ("/", name),
                    Some((parent, name)) => (parent, name),
                    None => return Err("bad node path"),
                };
                if !map
                    .get(parent)
                    .is_some_and(|pn| pn.children.iter().any(|c| c == name))
                {
                    return Err("a node its parent does not list");
                }
            }
        }
        let (mut owned, mut owned_bytes) = (HashMap::new(), HashMap::new());
        for (p, n) in &map {
            *owned.entry(n.perms.owner()).or_default() += 1;
            *owned_bytes.entry(n.perms.owner()).or_default() += footprint(p, n);
        }
        Ok(Tree {
            nodes: map,
            gen,
            owned,
            owned_bytes,
        })
    }

    /// Nodes `domid` owns.
    pub fn owned_count(&self, domid: u16) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Bytes of the nodes `domid` owns ([`footprint`]).
    pub fn owned_bytes(&self, domid: u16) -> usize {
        self.owned_bytes.get(&domid).copied().unwrap_or(0)
    }

    fn count_bytes(&mut self, owner: u16, add: usize, sub: usize) {
        let b = self.owned_bytes.entry(owner).or_default();
        *b = (*b + add).saturating_sub(sub);
        if *b == 0 {
            self.owned_bytes.remove(&owner);
        }
    }

    fn count(&mut self, owner: u16, up: bool) {
        let c = self.owned.entry(owner).or_default();
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&owner);
            }
        }
    }

    /// The node at `path`, borrowed.
    pub fn node_ref(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// A copy of the node at `path`.
    pub fn node(&self, path: &str) -> Option<Node> {
        self.nodes.get(path).cloned()
    }

    /// The current generations of `path`: `(gen, cgen)`, if it exists.
    pub fn version(&self, path: &str) -> Option<(u64, u64)> {
        self.nodes.get(path).map(|n| (n.gen, n.cgen))
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Nodes for Tree {
    fn get(&mut self, path: &str) -> Option<Node> {
        self.nodes.get(path).cloned()
    }
    fn edit_children(&mut self, path: &str, gen: u64, f: &mut dyn FnMut(&mut Vec<String>)) {
        if let Some(node) = self.nodes.get_mut(path) {
            // Unique unless a transaction holds a copy: then copied once.
            // (Its footprint does not change.)
            f(Arc::make_mut(&mut node.children));
            node.gen = gen;
            node.cgen = gen;
        }
    }
    fn set(&mut self, path: &str, node: Option<Node>) {
        if let Some(n) = &node {
            self.count(n.perms.owner(), true);
            self.count_bytes(n.perms.owner(), footprint(path, n), 0);
        }
        let old = match node {
            Some(n) => self.nodes.insert(path.to_string(), n),
            None => self.nodes.remove(path),
        };
        if let Some(old) = old {
            self.count(old.perms.owner(), false);
            self.count_bytes(old.perms.owner(), 0, footprint(path, &old));
        }
    }
    fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }
    fn quota_nodes(&self, domid: u16, k: usize) -> Option<usize> {
        Some(self.owned_count(domid) + k.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::absolute(s.into()).unwrap()
    }

    #[test]
    fn write_creates_parents_and_rm_takes_the_subtree() {
        let mut t = Tree::new();
        let c = Caller::DOM0;
        let ev = write(&mut t, &c, &p("/a/b/c"), b"v").unwrap();
        assert_eq!(
            ev.len(),
            1,
            "only the node written fires, not its new parents"
        );
        assert_eq!(read(&mut t, &c, &p("/a/b")).unwrap(), b"");
        assert_eq!(directory(&mut t, &c, &p("/a")).unwrap().0, vec!["b"]);
        rm(&mut t, &c, &p("/a/b")).unwrap();
        assert_eq!(read(&mut t, &c, &p("/a/b/c")), Err(XsError::NoEnt));
        assert_eq!(
            rm(&mut t, &c, &p("/a/b")).unwrap(),
            vec![],
            "already gone: fine"
        );
        assert_eq!(
            rm(&mut t, &c, &p("/x/y")),
            Err(XsError::NoEnt),
            "parent missing"
        );
        assert_eq!(rm(&mut t, &c, &Path::root()), Err(XsError::Inval));
    }

    #[test]
    fn unprivileged_callers_follow_permissions_and_own_what_they_create() {
        let mut t = Tree::new();
        let dom0 = Caller::DOM0;
        let d3 = Caller::domain(3);
        write(&mut t, &dom0, &p("/local/domain/3"), b"").unwrap();
        assert_eq!(
            write(&mut t, &d3, &p("/local/domain/3/x"), b"1"),
            Err(XsError::Acces)
        );
        let perms = Perms::parse([&b"n3"[..]]).unwrap();
        set_perms(&mut t, &dom0, &p("/local/domain/3"), perms).unwrap();
        write(&mut t, &d3, &p("/local/domain/3/x"), b"1").unwrap();
        assert_eq!(
            get_perms(&mut t, &d3, &p("/local/domain/3/x"))
                .unwrap()
                .owner(),
            3
        );
        assert_eq!(read(&mut t, &d3, &p("/tool")), Err(XsError::Acces));
        let give_away = Perms::parse([&b"n0"[..]]).unwrap();
        assert_eq!(
            set_perms(&mut t, &d3, &p("/local/domain/3/x"), give_away),
            Err(XsError::Perm)
        );
    }

    #[test]
    fn access_follows_c_xenstored() {
        let perms = Perms::parse([&b"r1"[..], b"w2", b"n3"]).unwrap();
        let c = |domid, target| Caller {
            target,
            ..Caller::domain(domid)
        };
        assert_eq!(c(1, None).access(&perms), Access::Both);
        assert_eq!(c(2, None).access(&perms), Access::Write);
        assert_eq!(c(3, None).access(&perms), Access::None);
        assert_eq!(c(9, None).access(&perms), Access::Read);
        assert_eq!(
            c(9, Some(1)).access(&perms),
            Access::Both,
            "a device model acts for its target"
        );
    }
}
