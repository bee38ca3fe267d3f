//! The toolstack: what xl does, for dom0kit's hosts: domain
//! configurations in xl.cfg(5) syntax and its TOML spelling ([`config`]),
//! with the disk syntax of xl-disk-configuration(5) and the virtual
//! device numbers of xen-vbd-interface(7) ([`disk`]); creating, listing
//! and destroying domains and detaching devices ([`domain`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod disk;
pub mod domain;
