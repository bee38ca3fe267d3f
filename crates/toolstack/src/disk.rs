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
                "backend" => {
                    // Driver domains are not built: dom0 serves every disk.
                    if !matches!(value, "0" | "Domain-0" | "") {
                        return Err(bad(
                            "backend",
                            value,
                            "Domain-0 (driver domains are not supported)",
                        ));
                    }
                    disk.backend = Some(value.to_string());
                }
                "backendtype" => {
                    if !matches!(value, "phy" | "qdisk" | "standalone") {
                        return Err(bad("backendtype", value, "phy, qdisk or standalone"));
                    }
                    disk.backend_type = Some(value.to_string());
                }
                "script" => disk.script = Some(value.to_string()),
                "specification" => {
                    if !matches!(value, "xen" | "") {
                        return Err(bad(
                            "specification",
                            value,
                            "xen (virtio disks are not supported)",
                        ));
                    }
                }
                // xl's other key that does not apply here.
                "transport" => {}
                _ => return Err(DiskError::Unknown(item.to_string())),
            },
            None => match item {
                "cdrom" => once(&mut devtype, "devtype", "cdrom")?,
                "direct-io-safe" => disk.direct_io_safe = true,
                "discard" => disk.discard = true,
                "no-discard" => disk.discard = false,
                "trusted" => disk.trusted = true,
                "untrusted" => disk.trusted = false,
                // A trailing comma's empty item is no parameter.
                "" if next.is_none() => {}
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
    let mut target = target.flatten();
    if let Some(t) = target.as_ref() {
        // An NBD target (`nbd://`, `nbd+unix://`, QEMU's `nbd:`) is the
        // backend's to parse, as xl leaves it to QEMU.
        let nbd = ["nbd:", "nbd+", "nbds:", "nbds+"]
            .iter()
            .any(|p| t.starts_with(p));
        if !t.starts_with('/') && !nbd {
            // A prefix of the deprecated syntax we do not know (tap2:,
            // iscsi:, ...) names a script or backend we do not have.
            if t.contains(':') {
                return Err(bad("target", t, "a path (this prefix is not supported)"));
            }
            // "/dev will be prepended if the path doesn't start with a '/'".
            target = Some(format!("/dev/{t}"));
        }
    }
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
    if letters.is_empty() || letters.len() > 5 {
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

/// `<letters><partition>` after a prefix, within the limits (libxl's
/// `device_virtdisk_matches`).
fn letters_and_partition(s: &str, max_disk: u32, max_part: u32) -> Option<(u32, u32)> {
    let letters: String = s.chars().take_while(char::is_ascii_lowercase).collect();
    let digits = &s[letters.len()..];
    let disk = disk_index(&letters)?;
    let part = if digits.is_empty() {
        0
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    (disk <= max_disk && part <= max_part).then_some((disk, part))
}

/// The device number of a virtual device name, as libxl's
/// `libxl__device_disk_dev_number` computes it (xen-vbd-interface(7)):
/// `xvd<disk><partition>` and `d<disk>p<partition>` (the compact
/// encoding up to disk and partition 15, the extended one beyond),
/// a plain number, `hd<disk><partition>` (4 disks, 63 partitions) and
/// `sd<disk><partition>` (16 disks, 15 partitions).
pub fn vbd_devid(vdev: &str) -> Option<u32> {
    let xvd = |disk: u32, part: u32| {
        if disk <= 15 && part <= 15 {
            (202 << 8) | (disk << 4) | part
        } else {
            (1 << 28) | (disk << 8) | part
        }
    };
    if let Some(rest) = vdev.strip_prefix('d') {
        if let Some((d, p)) = rest.split_once('p') {
            let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
            if all_digits(d) && all_digits(p) {
                let (disk, part) = (d.parse::<u32>().ok()?, p.parse::<u32>().ok()?);
                return (disk < (1 << 20) && part < 256).then(|| xvd(disk, part));
            }
        }
    }
    if let Some(rest) = vdev.strip_prefix("xvd") {
        let (disk, part) = letters_and_partition(rest, (1 << 20) - 1, 255)?;
        return Some(xvd(disk, part));
    }
    // A plain number (decimal, 0x hex or 0 octal, as strtoul reads it).
    let number = if let Some(h) = vdev.strip_prefix("0x") {
        u32::from_str_radix(h, 16).ok()
    } else if vdev.len() > 1 && vdev.starts_with('0') {
        u32::from_str_radix(&vdev[1..], 8).ok()
    } else if !vdev.is_empty() && vdev.bytes().all(|b| b.is_ascii_digit()) {
        vdev.parse().ok()
    } else {
        None
    };
    if let Some(n) = number {
        return (n <= i32::MAX as u32).then_some(n);
    }
    if let Some(rest) = vdev.strip_prefix("hd") {
        let (disk, part) = letters_and_partition(rest, 3, 63)?;
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk & 1) << 6) | part);
    }
    if let Some(rest) = vdev.strip_prefix("sd") {
        let (disk, part) = letters_and_partition(rest, 15, 15)?;
        return Some((8 << 8) | (disk << 4) | part);
    }
    None
}
