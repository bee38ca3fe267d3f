//! Transactions: a private copy of every node touched (taken at first
//! touch, as C xenstored copies a node into the transaction when it is
//! first read), the generation each had in the tree, and the log of
//! operations to replay at commit.
//!
//! At commit, each node touched must still have the generation it had (a
//! node's children count as part of it); otherwise `EAGAIN`. The log is then
//! replayed on a scratch layer over the current tree and the layer applied
//! at once: a commit applies whole or not at all.

use std::collections::HashMap;

use xenstore::{Path, Perms, XsError};

use crate::store::{self, Caller, Change, Node, Nodes, Tree};

/// Modifying operations an unprivileged caller's transaction may log.
pub const MAX_OPS: usize = 1024;

/// One operation of a transaction, replayed at commit.
#[derive(Clone, Debug)]
pub enum Op {
    /// `XS_WRITE`.
    Write(Path, Vec<u8>),
    /// `XS_MKDIR`.
    Mkdir(Path),
    /// `XS_RM`.
    Rm(Path),
    /// `XS_SET_PERMS`.
    SetPerms(Path, Perms),
}

/// An open transaction.
#[derive(Default)]
pub struct Transaction {
    /// The transaction's copies of the nodes it touched.
    view: HashMap<String, Option<Node>>,
    /// The generation each touched node had in the tree (`None`: absent);
    /// a node's children count as part of it.
    seen: HashMap<String, Option<u64>>,
    log: Vec<Op>,
    /// Paths in the order the transaction first touched them: the order in
    /// which its watch events fire at commit, as in C xenstored.
    order: Vec<String>,
    local_gen: u64,
    /// Whether the transaction made a node (C's `node_created`).
    created: bool,
    /// What [`footprint`](Transaction::footprint) tells, kept as the view
    /// and the log change.
    bytes: usize,
}

/// The bytes a view entry takes, as the memory quota counts them.
fn entry_bytes(path: &str, n: &Option<Node>) -> usize {
    n.as_ref()
        .map_or(path.len(), |n| crate::store::footprint(path, n))
}

/// The bytes a logged operation takes.
fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Write(p, v) => p.as_str().len() + v.len(),
        Op::Mkdir(p) | Op::Rm(p) => p.as_str().len(),
        Op::SetPerms(p, perms) => p.as_str().len() + perms.entries().len() * 4,
    }
}

/// The tree as the transaction sees it.
struct View<'a> {
    base: &'a Tree,
    tx: &'a mut Transaction,
}

impl Nodes for View<'_> {
    fn edit_children(&mut self, path: &str, gen: u64, f: &mut dyn FnMut(&mut Vec<String>)) {
        // In the transaction's own copy (taken now if it is the first
        // touch), so that adding many children copies the list only once.
        if self.get(path).is_none() {
            return;
        }
        if let Some(Some(node)) = self.tx.view.get_mut(path) {
            f(std::sync::Arc::make_mut(&mut node.children));
            node.gen = gen;
            node.cgen = gen;
        }
    }

    /// The transaction's copy of a node: taken from the tree at first
    /// touch (as C xenstored copies a node into the transaction when first
    /// read), with its generation remembered for the commit.
    fn get(&mut self, path: &str) -> Option<Node> {
        if let Some(n) = self.tx.view.get(path) {
            return n.clone();
        }
        let n = self.base.node(path);
        self.tx.order.push(path.to_string());
        self.tx
            .seen
            .insert(path.to_string(), n.as_ref().map(|n| n.gen));
        self.tx.bytes += entry_bytes(path, &n);
        self.tx.view.insert(path.to_string(), n.clone());
        n
    }

    fn set(&mut self, path: &str, node: Option<Node>) {
        let existed = match self.tx.view.get(path) {
            Some(n) => n.is_some(),
            None => self.base.node_ref(path).is_some(),
        };
        self.tx.created |= !existed && node.is_some();
        if !self.tx.view.contains_key(path) {
            self.tx.order.push(path.to_string());
            self.tx
                .seen
                .insert(path.to_string(), self.base.version(path).map(|v| v.0));
        }
        self.tx.bytes += entry_bytes(path, &node);
        if let Some(old) = self.tx.view.insert(path.to_string(), node) {
            self.tx.bytes = self.tx.bytes.saturating_sub(entry_bytes(path, &old));
        }
    }

    fn next_gen(&mut self) -> u64 {
        self.tx.local_gen += 1;
        self.tx.local_gen
    }

    fn quota_nodes(&self, domid: u16, _k: usize) -> Option<usize> {
        Some(self.base.owned_count(domid))
    }
}

/// A layer over the live tree for replaying a commit.
struct Scratch<'a> {
    tree: &'a mut Tree,
    changes: HashMap<String, Option<Node>>,
}

impl Nodes for Scratch<'_> {
    fn edit_children(&mut self, path: &str, gen: u64, f: &mut dyn FnMut(&mut Vec<String>)) {
        if !self.changes.contains_key(path) {
            let n = self.tree.node(path);
            self.changes.insert(path.to_string(), n);
        }
        if let Some(Some(node)) = self.changes.get_mut(path) {
            f(std::sync::Arc::make_mut(&mut node.children));
            node.gen = gen;
            node.cgen = gen;
        }
    }

    fn get(&mut self, path: &str) -> Option<Node> {
        match self.changes.get(path) {
            Some(n) => n.clone(),
            None => self.tree.node(path),
        }
    }
    fn set(&mut self, path: &str, node: Option<Node>) {
        self.changes.insert(path.to_string(), node);
    }
    fn next_gen(&mut self) -> u64 {
        self.tree.next_gen()
    }
    /// A commit's nodes are counted whole, before it is replayed.
    fn quota_nodes(&self, _domid: u16, _k: usize) -> Option<usize> {
        None
    }
}

fn apply(n: &mut impl Nodes, caller: &Caller, op: &Op) -> Result<Vec<Change>, XsError> {
    match op {
        Op::Write(p, v) => store::write(n, caller, p, v),
        Op::Mkdir(p) => store::mkdir(n, caller, p),
        Op::Rm(p) => store::rm(n, caller, p),
        Op::SetPerms(p, perms) => store::set_perms(n, caller, p, perms.clone()),
    }
}

impl Transaction {
    /// The bytes it holds, as the memory quota counts them: its copies of
    /// nodes and the values and permissions its log will write.
    pub fn footprint(&self) -> usize {
        self.bytes
    }

    /// The node-count quota at commit, as C's `transaction_fix_domains`:
    /// every unprivileged domain whose count the transaction changes
    /// (owners of nodes it made, removed or gave away) must stay below
    /// its `nodes` quota. Checked before the conflict check, as
    /// in C.
    fn check_node_counts(&self, tree: &Tree, caller: &Caller) -> Result<(), XsError> {
        let mut delta: HashMap<u16, isize> = HashMap::new();
        for (path, node) in &self.view {
            let before = tree.node_ref(path).map(|n| n.perms.owner());
            let after = node.as_ref().map(|n| n.perms.owner());
            if before == after {
                continue;
            }
            if let Some(d) = before {
                *delta.entry(d).or_default() -= 1;
            }
            if let Some(d) = after {
                *delta.entry(d).or_default() += 1;
            }
        }
        for (domid, d) in delta {
            let count = tree.owned_count(domid) as isize + d;
            // The caller's quota stands for every domain's (the same unless
            // SET_QUOTA set them apart).
            let limit = isize::try_from(caller.quota.nodes).unwrap_or(isize::MAX);
            if domid != 0 && count >= limit {
                return Err(XsError::NoSpc);
            }
        }
        Ok(())
    }

    /// A new transaction.
    pub fn new() -> Transaction {
        // Generations inside a transaction come from their own range, so
        // that none equals one of the tree's.
        Transaction {
            local_gen: 1 << 63,
            ..Transaction::default()
        }
    }

    /// `XS_READ` in the transaction.
    pub fn read(&mut self, base: &Tree, caller: &Caller, path: &Path) -> Result<Vec<u8>, XsError> {
        store::read(&mut View { base, tx: self }, caller, path)
    }

    /// `XS_DIRECTORY` in the transaction.
    pub fn directory(
        &mut self,
        base: &Tree,
        caller: &Caller,
        path: &Path,
    ) -> Result<(Vec<String>, u64), XsError> {
        store::directory(&mut View { base, tx: self }, caller, path)
    }

    /// `XS_GET_PERMS` in the transaction.
    pub fn get_perms(
        &mut self,
        base: &Tree,
        caller: &Caller,
        path: &Path,
    ) -> Result<Perms, XsError> {
        store::get_perms(&mut View { base, tx: self }, caller, path)
    }

    /// A modifying operation: applied to the view now, replayed at commit.
    pub fn modify(&mut self, base: &Tree, caller: &Caller, op: Op) -> Result<(), XsError> {
        if !caller.privileged && self.log.len() >= MAX_OPS {
            return Err(XsError::NoSpc);
        }
        apply(&mut View { base, tx: self }, caller, &op)?;
        self.bytes += op_bytes(&op);
        self.log.push(op);
        Ok(())
    }

    /// Whether an unprivileged caller's transaction has touched all the
    /// nodes it may (`ENOSPC` from then on, like C's transaction-nodes).
    pub fn full(&self, caller: &Caller) -> bool {
        !caller.privileged && self.view.len() >= caller.quota.transaction_nodes
    }

    /// Commits: `EAGAIN` if anything the transaction looked at changed;
    /// otherwise applies its operations and returns their changes.
    pub fn commit(self, tree: &mut Tree, caller: &Caller) -> Result<Vec<Change>, XsError> {
        if !caller.privileged && self.created {
            self.check_node_counts(tree, caller)?;
        }
        for (path, seen) in &self.seen {
            if *seen != tree.version(path).map(|v| v.0) {
                return Err(XsError::Again);
            }
        }
        let mut scratch = Scratch {
            tree,
            changes: HashMap::new(),
        };
        let mut out = Vec::new();
        for op in &self.log {
            out.extend(apply(&mut scratch, caller, op).map_err(|_| XsError::Again)?);
        }
        let Scratch { tree, changes } = scratch;
        for (p, n) in changes {
            tree.set(&p, n);
        }
        // One event per node, in the order the transaction first touched
        // them; a non-exact event wins over an exact one. Linear in the
        // changes (a transaction may remove a large subtree).
        let rank: HashMap<&str, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        let mut index: HashMap<Path, usize> = HashMap::new();
        let mut merged: Vec<Change> = Vec::new();
        for ch in out {
            match index.get(&ch.path) {
                Some(&i) => merged[i].exact &= ch.exact,
                None => {
                    index.insert(ch.path.clone(), merged.len());
                    merged.push(ch);
                }
            }
        }
        merged.sort_by_cached_key(|c| rank.get(c.path.as_str()).copied().unwrap_or(usize::MAX));
        Ok(merged)
    }
}
