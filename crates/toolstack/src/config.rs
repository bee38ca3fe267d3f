//! Domain configurations: xl.cfg(5) syntax (`KEY = VALUE` lines, `"` or
//! `'` strings, numbers, `[ ... ]` lists, `#` comments) and the same keys
//! in TOML (which adds `true`/`false`; tables are refused). Only the keys
//! that apply to a dom0kit host are read; xl's keys that only mean
//! something to real Xen (`kernel`, `builder`, `vnc`, ...) are accepted and
//! listed in [`DomainConfig::ignored`]; any other key is an error, as is a
//! bad value, and the message names the key and the problem.

use std::collections::HashSet;
use std::fmt;

use crate::disk::{self, Disk};

/// A domain as its configuration describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name` (required).
    pub name: String,
    /// `uuid`, if given.
    pub uuid: Option<String>,
    /// `memory`, in MiB (default 128).
    pub memory_mib: u64,
    /// `maxmem`, in MiB, if given.
    pub maxmem_mib: Option<u64>,
    /// `vcpus` (default 1).
    pub vcpus: u32,
    /// `disk`.
    pub disks: Vec<Disk>,
    /// `vif`.
    pub vifs: Vec<Vif>,
    /// `pci`.
    pub pcis: Vec<Pci>,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: OnEvent,
    /// `on_reboot` (default restart).
    pub on_reboot: OnEvent,
    /// `on_crash` (default destroy).
    pub on_crash: OnEvent,
    /// `on_watchdog`.
    pub on_watchdog: OnEvent,
    /// xl keys given that do not apply here.
    pub ignored: Vec<String>,
}

/// What to do when the guest powers off, reboots or crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEvent {
    /// `destroy`.
    Destroy,
    /// `restart`.
    Restart,
    /// `rename-restart`.
    RenameRestart,
    /// `preserve`.
    Preserve,
    /// `coredump-destroy`.
    CoredumpDestroy,
    /// `coredump-restart`.
    CoredumpRestart,
    /// `soft-reset`.
    SoftReset,
}

impl OnEvent {
    fn parse(s: &str) -> Option<OnEvent> {
        Some(match s {
            "destroy" => OnEvent::Destroy,
            "restart" => OnEvent::Restart,
            "rename-restart" => OnEvent::RenameRestart,
            "preserve" => OnEvent::Preserve,
            "coredump-destroy" => OnEvent::CoredumpDestroy,
            "coredump-restart" => OnEvent::CoredumpRestart,
            "soft-reset" => OnEvent::SoftReset,
            _ => return None,
        })
    }
}

/// A network interface (xl-network-configuration(5)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vif {
    /// `mac`, if given (six bytes).
    pub mac: Option<[u8; 6]>,
    /// `bridge`.
    pub bridge: Option<String>,
    /// `ip`.
    pub ip: Option<String>,
    /// `vifname`.
    pub vifname: Option<String>,
    /// `type` (`vif` or `ioemu`).
    pub kind: Option<String>,
    /// `model`.
    pub model: Option<String>,
    /// `script`.
    pub script: Option<String>,
    /// `backend` domain.
    pub backend: Option<String>,
    /// `rate`.
    pub rate: Option<String>,
    /// `devid`.
    pub devid: Option<u32>,
}

/// A PCI device to pass through (xl-pci-configuration(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pci {
    /// Segment (domain).
    pub segment: u16,
    /// Bus.
    pub bus: u8,
    /// Device.
    pub device: u8,
    /// Function.
    pub function: u8,
    /// `permissive=1`.
    pub permissive: bool,
}

/// A configuration refused: where, which key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Line (from 1; 0: the file as a whole).
    pub line: usize,
    /// The key (with `[index]` for an element of a list), if one.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.key, self.line) {
            (Some(k), 0) => write!(f, "{k}: {}", self.problem),
            (Some(k), l) => write!(f, "line {l}: {k}: {}", self.problem),
            (None, 0) => write!(f, "{}", self.problem),
            (None, l) => write!(f, "line {l}: {}", self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Str(String),
    Num(i64),
    Bool(bool),
    List(Vec<Value>),
}

/// Keys of xl.cfg(5) that only mean something on real Xen.
const IGNORED: &[&str] = &[
    "type",
    "builder",
    "kernel",
    "ramdisk",
    "cmdline",
    "extra",
    "root",
    "bootloader",
    "bootloader_args",
    "maxvcpus",
    "cpus",
    "cpus_soft",
    "cpu_weight",
    "cpu_cap",
    "serial",
    "vnc",
    "vnclisten",
    "vncdisplay",
    "vncpasswd",
    "sdl",
    "vga",
    "videoram",
    "stdvga",
    "boot",
    "device_model_version",
    "device_model_override",
    "acpi",
    "apic",
    "pae",
    "hap",
    "nestedhvm",
    "localtime",
    "usb",
    "usbdevice",
    "keymap",
    "xen_platform_pci",
    "viridian",
    "seclabel",
    "soundhw",
    "vfb",
    "vkb",
    "channel",
    "rdm",
    "e820_host",
    "gfx_passthru",
    "iommu_memkb",
    "max_grant_frames",
    "max_maptrack_frames",
    "dm_restrict",
    "pvh",
    "passthrough",
    "tsc_mode",
    "nomigrate",
    "driver_domain",
    "device_tree",
    "claim_mode",
    "pool",
    "shadow_memory",
    "firmware",
    "bios",
    "kernel_args",
    "vtpm",
    "p9",
    "vdispl",
    "vsnd",
    "usbctrl",
    "usbdev",
    "ioports",
    "iomem",
    "irqs",
    "vif_pci",
    "localtime",
    "rtc_timeoffset",
    "timer_mode",
    "altp2m",
    "vpmu",
    "event_channels",
    "vuart",
    "trap_unmapped_accesses",
    "xenstore_feature_mask",
];

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
    toml: bool,
}

impl Parser<'_> {
    fn err(&self, key: Option<&str>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.line,
            key: key.map(str::to_string),
            problem: problem.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// Spaces, tabs and comments; newlines too if `lines`.
    fn skip(&mut self, lines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'\n' if lines => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn value(&mut self, key: &str) -> Result<Value, ConfigError> {
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None | Some(b'\n') => {
                            return Err(self.err(Some(key), "string is not closed"))
                        }
                        Some(c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        // Escapes in double quotes, as C and TOML write them.
                        Some(b'\\') if q == b'"' => {
                            self.pos += 1;
                            let e = self
                                .peek()
                                .ok_or_else(|| self.err(Some(key), "bad escape"))?;
                            s.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'\\' => b'\\',
                                b'"' => b'"',
                                b'\'' => b'\'',
                                _ => return Err(self.err(Some(key), "bad escape")),
                            });
                            self.pos += 1;
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
                String::from_utf8(s)
                    .map(Value::Str)
                    .map_err(|_| self.err(Some(key), "string is not UTF-8"))
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip(true);
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        break;
                    }
                    let ikey = format!("{key}[{}]", items.len());
                    items.push(self.value(&ikey)?);
                    self.skip(true);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {}
                        _ => return Err(self.err(Some(key), "expected , or ] in the list")),
                    }
                }
                Ok(Value::List(items))
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    self.pos += 1;
                }
                let word = String::from_utf8_lossy(&self.text[start..self.pos]).replace('_', "");
                let n = match word.strip_prefix("0x") {
                    Some(h) => i64::from_str_radix(h, 16).ok(),
                    None => word.parse().ok(),
                };
                n.map(Value::Num)
                    .ok_or_else(|| self.err(Some(key), format!("{word:?} is not a number")))
            }
            Some(b't' | b'f') if self.toml => {
                for (word, v) in [("true", true), ("false", false)] {
                    if self.text[self.pos..].starts_with(word.as_bytes()) {
                        self.pos += word.len();
                        return Ok(Value::Bool(v));
                    }
                }
                Err(self.err(Some(key), "expected a value"))
            }
            _ => Err(self.err(Some(key), "expected a value: \"string\", number or [list]")),
        }
    }

    fn entries(&mut self) -> Result<Vec<(usize, String, Value)>, ConfigError> {
        let mut out = Vec::new();
        loop {
            self.skip(true);
            let Some(c) = self.peek() else {
                return Ok(out);
            };
            if c == b'[' {
                return Err(self.err(
                    None,
                    "tables are not supported: write every key at the top level",
                ));
            }
            let start = self.pos;
            while self
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                self.pos += 1;
            }
            if start == self.pos {
                return Err(self.err(None, format!("unexpected {:?}", c as char)));
            }
            let key = String::from_utf8_lossy(&self.text[start..self.pos]).into_owned();
            self.skip(false);
            if self.peek() != Some(b'=') {
                return Err(self.err(Some(&key), "expected ="));
            }
            self.pos += 1;
            self.skip(false);
            let line = self.line;
            let v = self.value(&key)?;
            self.skip(false);
            match self.peek() {
                None | Some(b'\n') | Some(b';') => {
                    if self.peek() == Some(b';') {
                        self.pos += 1;
                    }
                }
                _ => return Err(self.err(Some(&key), "unexpected text after the value")),
            }
            out.push((line, key, v));
        }
    }
}

/// Parses a configuration in xl.cfg syntax.
pub fn parse_xl(text: &str) -> Result<DomainConfig, ConfigError> {
    parse(text, false)
}

/// Parses a configuration in TOML.
pub fn parse_toml(text: &str) -> Result<DomainConfig, ConfigError> {
    parse(text, true)
}

/// Parses a file's contents: TOML if `name` ends in `.toml`, else xl.cfg.
pub fn parse_file(name: &str, text: &str) -> Result<DomainConfig, ConfigError> {
    parse(text, name.ends_with(".toml"))
}

fn parse(text: &str, toml: bool) -> Result<DomainConfig, ConfigError> {
    let mut p = Parser {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
        toml,
    };
    let entries = p.entries()?;
    let mut seen = HashSet::new();
    let mut c = DomainConfig {
        name: String::new(),
        uuid: None,
        memory_mib: 128,
        maxmem_mib: None,
        vcpus: 1,
        disks: Vec::new(),
        vifs: Vec::new(),
        pcis: Vec::new(),
        on_poweroff: OnEvent::Destroy,
        on_reboot: OnEvent::Restart,
        on_crash: OnEvent::Destroy,
        on_watchdog: OnEvent::Destroy,
        ignored: Vec::new(),
    };
    for (line, key, v) in entries {
        let err = |k: &str, problem: String| ConfigError {
            line,
            key: Some(k.to_string()),
            problem,
        };
        if !seen.insert(key.clone()) {
            return Err(err(&key, "is given twice".into()));
        }
        let string = |v: &Value| match v {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(err(&key, "must be a string".into())),
        };
        let number = |v: &Value, min: i64, max: i64| match v {
            Value::Num(n) if (min..=max).contains(n) => Ok(*n),
            Value::Num(n) => Err(err(&key, format!("{n} is out of range {min}..={max}"))),
            _ => Err(err(&key, "must be a number".into())),
        };
        let strings = |v: &Value| match v {
            Value::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Str(s) => Ok(s.clone()),
                    _ => Err(err(&format!("{key}[{i}]"), "must be a string".into())),
                })
                .collect::<Result<Vec<_>, _>>(),
            _ => Err(err(&key, "must be a list of strings".into())),
        };
        match key.as_str() {
            "name" => {
                let name = string(&v)?;
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(err(
                        "name",
                        format!("{name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
                    ));
                }
                if name.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("name", format!("{name:?} would read as a domain id")));
                }
                c.name = name;
            }
            "uuid" => {
                let u = string(&v)?;
                let hex: String = u.chars().filter(|&ch| ch != '-').collect();
                if hex.len() != 32 || !hex.chars().all(|ch| ch.is_ascii_hexdigit()) {
                    return Err(err("uuid", format!("{u:?} is not a UUID")));
                }
                c.uuid = Some(u.to_lowercase());
            }
            "memory" => c.memory_mib = number(&v, 1, 1 << 20)? as u64,
            "maxmem" => c.maxmem_mib = Some(number(&v, 1, 1 << 20)? as u64),
            "vcpus" => c.vcpus = number(&v, 1, 128)? as u32,
            "disk" => {
                for (i, spec) in strings(&v)?.iter().enumerate() {
                    let d =
                        disk::parse(spec).map_err(|e| err(&format!("disk[{i}]"), e.to_string()))?;
                    if c.disks.iter().any(|o| o.devid == d.devid) {
                        return Err(err(
                            &format!("disk[{i}]"),
                            format!("vdev {} is already used", d.vdev),
                        ));
                    }
                    c.disks.push(d);
                }
            }
            "vif" => {
                for (i, spec) in strings(&v)?.iter().enumerate() {
                    let k = format!("vif[{i}]");
                    c.vifs.push(parse_vif(spec).map_err(|p| err(&k, p))?);
                }
            }
            "pci" => {
                for (i, spec) in strings(&v)?.iter().enumerate() {
                    let k = format!("pci[{i}]");
                    c.pcis.push(parse_pci(spec).map_err(|p| err(&k, p))?);
                }
            }
            "on_poweroff" | "on_reboot" | "on_crash" | "on_watchdog" => {
                let s = string(&v)?;
                let e = OnEvent::parse(&s).ok_or_else(|| {
                    err(&key, format!("{s:?} is not destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart or soft-reset"))
                })?;
                match key.as_str() {
                    "on_poweroff" => c.on_poweroff = e,
                    "on_reboot" => c.on_reboot = e,
                    "on_watchdog" => c.on_watchdog = e,
                    _ => c.on_crash = e,
                }
            }
            k if IGNORED.contains(&k) => c.ignored.push(key.clone()),
            _ => return Err(err(&key, "is not a known key".into())),
        }
    }
    if c.name.is_empty() {
        return Err(ConfigError {
            line: 0,
            key: Some("name".into()),
            problem: "is missing".into(),
        });
    }
    if c.maxmem_mib.is_some_and(|m| m < c.memory_mib) {
        return Err(ConfigError {
            line: 0,
            key: Some("maxmem".into()),
            problem: "is less than memory".into(),
        });
    }
    Ok(c)
}

fn parse_vif(spec: &str) -> Result<Vif, String> {
    let mut v = Vif::default();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value"))?;
        let s = Some(value.to_string());
        match key {
            "mac" => {
                let bytes: Vec<u8> = value
                    .split(':')
                    .map(|b| u8::from_str_radix(b, 16))
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("mac {value:?} is not six hex bytes"))?;
                let mac: [u8; 6] = bytes
                    .try_into()
                    .map_err(|_| format!("mac {value:?} is not six hex bytes"))?;
                if mac[0] & 1 != 0 {
                    return Err(format!("mac {value:?} is a multicast address"));
                }
                v.mac = Some(mac);
            }
            "bridge" => v.bridge = s,
            "ip" => v.ip = s,
            "vifname" => v.vifname = s,
            "type" => {
                if !matches!(value, "vif" | "ioemu") {
                    return Err(format!("type {value:?} is not vif or ioemu"));
                }
                v.kind = s;
            }
            "model" => v.model = s,
            "script" => v.script = s,
            "backend" => v.backend = s,
            "rate" => v.rate = s,
            "devid" => {
                v.devid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("devid {value:?} is not a number"))?,
                )
            }
            "gatewaydev" | "accel" | "mtu" | "forwarddev" | "trusted" | "untrusted" => {}
            _ => return Err(format!("{key:?} is not a vif parameter")),
        }
    }
    Ok(v)
}

fn parse_pci(spec: &str) -> Result<Pci, String> {
    let mut items = spec.split(',').map(str::trim);
    let bdf = items.next().unwrap_or("");
    let bdf = bdf.split('@').next().unwrap_or(bdf);
    let bad = || format!("{bdf:?} is not [SSSS:]BB:DD.F");
    let (rest, function) = bdf.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (segment, bus, device) = match parts[..] {
        [b, d] => ("0", b, d),
        [s, b, d] => (s, b, d),
        _ => return Err(bad()),
    };
    let hex = |s: &str, max: u32| {
        u32::from_str_radix(s, 16)
            .ok()
            .filter(|&v| v <= max && !s.is_empty())
            .ok_or_else(bad)
    };
    let mut pci = Pci {
        segment: hex(segment, 0xffff)? as u16,
        bus: hex(bus, 0xff)? as u8,
        device: hex(device, 0x1f)? as u8,
        function: hex(function, 7)? as u8,
        permissive: false,
    };
    for item in items.filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some(("permissive", v)) => pci.permissive = v == "1",
            Some(("msitranslate" | "seize" | "power_mgmt" | "rdm_policy" | "vslot", _)) => {}
            _ => return Err(format!("{item:?} is not a pci parameter")),
        }
    }
    Ok(pci)
}
