//! `DISKSPEC` strings (xl-disk-configuration(5)) and virtual device
//! numbers (xen-vbd-interface(7)).

use thiserror::Error;

/// A disk as the spec gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The image or device (`None`: an empty cdrom drive).
    pub target: Option<String>,
    /// The image format.
    pub format: Format,
    /// The guest's name for it (`xvda`, `hdc`, `sdb1`, `d0p1`...).
    pub vdev: String,
    /// Its number in `device/vbd/<devid>`.
    pub devid: u32,
    /// Whether the guest may write.
    pub writable: bool,
    /// A cdrom (`devtype=cdrom`).
    pub cdrom: bool,
    /// The backend domain by name (`None`: dom0).
    pub backend: Option<String>,
    /// `backendtype=`: phy, qdisk, standalone (`None`: chosen for it).
    pub backend_type: Option<String>,
    /// `script=`.
    pub script: Option<String>,
    /// `direct-io-safe`.
    pub direct_io_safe: bool,
    /// Whether to advertise discard (`discard`, the default, or
    /// `no-discard`).
    pub discard: bool,
    /// Whether the frontend may trust the backend.
    pub trusted: bool,
}

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `raw`.
    Raw,
    /// `qcow`.
    Qcow,
    /// `qcow2`.
    Qcow2,
    /// `vhd`.
    Vhd,
    /// `qed`.
    Qed,
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "raw" => Format::Raw,
            "qcow" => Format::Qcow,
            "qcow2" => Format::Qcow2,
            "vhd" => Format::Vhd,
            "qed" => Format::Qed,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow => "qcow",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Qed => "qed",
        }
    }
}

/// What is wrong with a `DISKSPEC`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DiskError {
    /// A parameter given twice.
    #[error("{0} is given twice")]
    Twice(&'static str),
    /// No `vdev`.
    #[error("vdev is missing")]
    NoVdev,
    /// A value that is not allowed.
    #[error("{key}: {value:?} is not {expected}")]
    Bad {
        /// The parameter.
        key: &'static str,
        /// What it held.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// More positional parameters than there are.
    #[error("unexpected parameter {0:?}")]
    Extra(String),
    /// An unknown `key=value`.
    #[error("unknown parameter {0:?}")]
    Unknown(String),
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> DiskError {
    DiskError::Bad {
        key,
        value: value.to_string(),
        expected,
    }
}

/// Parses one `DISKSPEC`.
pub fn parse(spec: &str) -> Result<Disk, DiskError> {
    // Slots of the four positional parameters, each at most once.
    let mut target: Option<Option<String>> = None;
    let mut format: Option<String> = None;
    let mut vdev: Option<String> = None;
    let mut access: Option<String> = None;
    let mut devtype: Option<String> = None;
    let mut disk = Disk {
        target: None,
        format: Format::Raw,
        vdev: String::new(),
        devid: 0,
        writable: true,
        cdrom: false,
        backend: None,
        backend_type: None,
        script: None,
        direct_io_safe: false,
        discard: true,
        trusted: true,
    };
    fn once(slot: &mut Option<String>, key: &'static str, v: &str) -> Result<(), DiskError> {
        if slot.is_some() {
            return Err(DiskError::Twice(key));
        }
        *slot = Some(v.to_string());
        Ok(())
    }
    let mut positionals: Vec<String> = Vec::new();
    let mut named_target: Option<Option<String>> = None;
    let mut rest = spec;
    loop {
        let trimmed = rest.trim_start();
        // `target=` takes the rest of the string, commas included.
        if let Some(t) = trimmed.strip_prefix("target=") {
            named_target = Some((!t.is_empty()).then(|| t.to_string()));
            break;
        }
        let (item, next) = match trimmed.split_once(',') {
            Some((a, b)) => (a.trim(), Some(b)),
            None => (trimmed.trim(), None),
        };
        match item.split_once('=') {
            Some((key, value)) => match key {
                "format" => once(&mut format, "format", value)?,
                "vdev" => once(&mut vdev, "vdev", value)?,
                "access" => once(&mut access, "access", value)?,
                "devtype" => once(&mut devtype, "devtype", value)?,
                "backend" => disk.backend = Some(value.to_string()),
                "backendtype" => {
                    if !matches!(value, "phy" | "qdisk" | "standalone") {
                        return Err(bad("backendtype", value, "phy, qdisk or standalone"));
                    }
                    disk.backend_type = Some(value.to_string());
                }
                "script" => disk.script = Some(value.to_string()),
                // xl's other keys that do not apply here.
                "specification" | "transport" => {}
                _ => return Err(DiskError::Unknown(item.to_string())),
            },
            None => match item {
                "cdrom" => once(&mut devtype, "devtype", "cdrom")?,
                "direct-io-safe" => disk.direct_io_safe = true,
                "discard" => disk.discard = true,
                "no-discard" => disk.discard = false,
                "trusted" => disk.trusted = true,
                "untrusted" => disk.trusted = false,
                _ => positionals.push(item.to_string()),
            },
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    // The deprecated syntax, `raw:/path,hdc:cdrom,ro`: a prefix on the
    // target names the format (or the backend), and the vdev comes second.
    let mut order: &[&str] = &["target", "format", "vdev", "access"];
    if let Some(first) = positionals.first().cloned() {
        for (prefix, fmt, backend) in [
            ("tap:aio:", None, None),
            ("tap:qcow2:", Some("qcow2"), None),
            ("aio:", None, None),
            ("phy:", None, Some("phy")),
            ("file:", None, None),
            ("raw:", Some("raw"), None),
            ("qcow2:", Some("qcow2"), None),
            ("qcow:", Some("qcow"), None),
            ("vhd:", Some("vhd"), None),
            ("qed:", Some("qed"), None),
        ] {
            if let Some(t) = first.strip_prefix(prefix) {
                if let Some(f) = fmt {
                    once(&mut format, "format", f)?;
                }
                if let Some(b) = backend {
                    disk.backend_type = Some(b.to_string());
                }
                positionals[0] = t.to_string();
                order = &["target", "vdev", "access"];
                break;
            }
        }
    }
    // Each positional goes to the next parameter not given by name.
    let mut slots = order.iter();
    for item in positionals {
        let slot = loop {
            match slots.next() {
                Some(&"target") if target.is_none() => break "target",
                Some(&"format") if format.is_none() => break "format",
                Some(&"vdev") if vdev.is_none() => break "vdev",
                Some(&"access") if access.is_none() => break "access",
                Some(_) => continue,
                None => return Err(DiskError::Extra(item)),
            }
        };
        match slot {
            "target" => target = Some((!item.is_empty()).then_some(item)),
            "format" => format = Some(item),
            "vdev" => vdev = Some(item),
            _ => access = Some(item),
        }
    }
    if let Some(t) = named_target {
        // "permissible even if an empty value for the target was already
        // specified as a positional parameter".
        if matches!(target, Some(Some(_))) {
            return Err(DiskError::Twice("target"));
        }
        target = Some(t);
    }
    let target = target.flatten();
    let mut vdev = vdev.filter(|v| !v.is_empty()).ok_or(DiskError::NoVdev)?;
    if let Some(v) = vdev.strip_suffix(":cdrom") {
        vdev = v.to_string();
        once(&mut devtype, "devtype", "cdrom")?;
    }
    disk.cdrom = match devtype.as_deref() {
        None | Some("") => false,
        Some("cdrom") => true,
        Some(other) => return Err(bad("devtype", other, "cdrom")),
    };
    disk.format = match format.as_deref() {
        None | Some("") => Format::Raw,
        Some(f) => {
            Format::parse(f).ok_or_else(|| bad("format", f, "raw, qcow, qcow2, vhd or qed"))?
        }
    };
    disk.writable = match access.as_deref() {
        None | Some("") => !disk.cdrom,
        Some("rw" | "w") => true,
        Some("ro" | "r") => false,
        Some(a) => return Err(bad("access", a, "ro, r, rw or w")),
    };
    if disk.cdrom && disk.writable {
        return Err(bad("access", "rw", "read-only for a cdrom"));
    }
    disk.target = target;
    if disk.target.is_none() && !disk.cdrom {
        return Err(bad("target", "", "given (only a cdrom may be empty)"));
    }
    disk.devid =
        vbd_devid(&vdev).ok_or_else(|| bad("vdev", &vdev, "a xen-vbd-interface(7) name"))?;
    disk.vdev = vdev;
    Ok(disk)
}

/// The letters of a disk name as a number: `a` 0 .. `z` 25, `aa` 26, ...
fn disk_index(letters: &str) -> Option<u32> {
    if letters.is_empty() || letters.len() > 3 {
        return None;
    }
    let mut n: u32 = 0;
    for b in letters.bytes() {
        if !b.is_ascii_lowercase() {
            return None;
        }
        n = n * 26 + u32::from(b - b'a') + 1;
    }
    Some(n - 1)
}

/// The device number of a virtual device name (xen-vbd-interface(7)):
/// `xvd<disk><partition>`, `hd<disk><partition>` (4 disks), `sd<...>`, or
/// `d<disk>p<partition>`; partitions up to 15 in the compact encodings,
/// 255 in the extended one.
pub fn vbd_devid(vdev: &str) -> Option<u32> {
    let split = |s: &str| -> Option<(u32, u32)> {
        let letters: String = s.chars().take_while(char::is_ascii_lowercase).collect();
        let digits = &s[letters.len()..];
        let disk = disk_index(&letters)?;
        let part = if digits.is_empty() {
            0
        } else if digits.starts_with('0') {
            return None;
        } else {
            digits.parse().ok()?
        };
        Some((disk, part))
    };
    let compact_or_extended = |major: u32, disk: u32, part: u32| -> Option<u32> {
        if disk < 16 && part < 16 {
            Some((major << 8) | (disk << 4) | part)
        } else if disk < (1 << 20) && part < 256 {
            Some((1 << 28) | (disk << 8) | part)
        } else {
            None
        }
    };
    if let Some(rest) = vdev.strip_prefix("xvd") {
        let (disk, part) = split(rest)?;
        return compact_or_extended(202, disk, part);
    }
    if let Some(rest) = vdev.strip_prefix("sd") {
        let (disk, part) = split(rest)?;
        return compact_or_extended(8, disk, part);
    }
    if let Some(rest) = vdev.strip_prefix("hd") {
        let (disk, part) = split(rest)?;
        if disk > 3 || part > 63 {
            return None;
        }
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk % 2) << 6) | part);
    }
    if let Some(rest) = vdev.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (d.parse::<u32>().ok()?, p.parse::<u32>().ok()?),
            None => (rest.parse::<u32>().ok()?, 0),
        };
        if disk >= (1 << 20) || part > 255 {
            return None;
        }
        return Some((1 << 28) | (disk << 8) | part);
    }
    None
}
