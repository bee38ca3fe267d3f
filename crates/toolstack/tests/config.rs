//! Domain configurations: the syntax of xl.cfg(5) and
//! xl-disk-configuration(5), the numbers of xen-vbd-interface(7), and every
//! kind of mistake refused with its key and problem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use toolstack::config::{parse_file, parse_toml, parse_xl, OnEvent};
use toolstack::disk::{self, vbd_devid, Format};

#[test]
fn an_xl_cfg_file_in_the_style_of_xls_examples() {
    let text = r#"
# A PV guest, as xl's own examples write one.
name = "demo.pv"
kernel = "/boot/vmlinuz"      # real Xen only: accepted, ignored
extra = "root=/dev/xvda1"
memory = 256
vcpus = 2
vif = [ '' , 'mac=00:16:3e:01:02:03,bridge=xenbr0' ]
disk = [ '/srv/guest.img,raw,xvda,rw',
         '/srv/cd.iso,,hdc,cdrom', ]
pci = [ '0000:03:00.1,permissive=1' ]
on_crash = "preserve"
on_watchdog = "restart"
"#;
    let c = parse_xl(text).unwrap();
    assert_eq!(c.name, "demo.pv");
    assert_eq!(c.memory_mib, 256);
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.ignored, ["kernel", "extra"]);
    assert_eq!(c.vifs.len(), 2);
    assert_eq!(c.vifs[0].mac, None);
    assert_eq!(c.vifs[1].mac, Some([0x00, 0x16, 0x3e, 1, 2, 3]));
    assert_eq!(c.vifs[1].bridge.as_deref(), Some("xenbr0"));
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.disks[0].devid, 51712);
    assert!(c.disks[0].writable);
    assert!(c.disks[1].cdrom && !c.disks[1].writable);
    assert_eq!(c.disks[1].devid, 5632);
    assert_eq!(
        (c.pcis[0].bus, c.pcis[0].device, c.pcis[0].function),
        (3, 0, 1)
    );
    assert!(c.pcis[0].permissive);
    assert_eq!(c.on_crash, OnEvent::Preserve);
    assert_eq!(c.on_reboot, OnEvent::Restart);
    assert_eq!(c.on_poweroff, OnEvent::Destroy);
    assert_eq!(c.on_watchdog, OnEvent::Restart);
}

#[test]
fn the_same_in_toml() {
    let text = r#"
name = "demo"
memory = 64
disk = ["format=raw, vdev=xvda, access=rw, target=/srv/a,b.img"]
"#;
    let c = parse_toml(text).unwrap();
    assert_eq!(c.disks[0].target.as_deref(), Some("/srv/a,b.img"));
    let same = parse_file("demo.toml", text).unwrap();
    assert_eq!(same, c);
    assert!(
        parse_toml("name = \"x\"\n[disk]\n").is_err(),
        "tables are refused"
    );
}

/// The equivalent spellings the man page lists.
#[test]
fn xl_disk_configuration_equivalences() {
    let first = [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "raw:/dev/vg/guest-volume,hda,w",
    ];
    for s in first {
        let d = disk::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(d.target.as_deref(), Some("/dev/vg/guest-volume"), "{s}");
        assert_eq!(
            (d.format, d.vdev.as_str(), d.writable, d.cdrom),
            (Format::Raw, "hda", true, false),
            "{s}"
        );
        assert_eq!(d.devid, 768);
    }
    let second = [
        "/root/image.iso,,hdc,cdrom",
        "/root/image.iso,,hdc,,cdrom",
        "/root/image.iso,raw,hdc,devtype=cdrom",
        "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
        "raw:/root/image.iso,hdc:cdrom,ro",
    ];
    for s in second {
        let d = disk::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(d.target.as_deref(), Some("/root/image.iso"), "{s}");
        assert_eq!(
            (d.vdev.as_str(), d.writable, d.cdrom),
            ("hdc", false, true),
            "{s}"
        );
    }
    let q = disk::parse("/srv/a.qcow2,qcow2,xvdb").unwrap();
    assert_eq!((q.format, q.devid), (Format::Qcow2, 51728));
    let phy = disk::parse("phy:/dev/sdb,xvdc,r").unwrap();
    assert_eq!(phy.backend_type.as_deref(), Some("phy"));
    assert!(!phy.writable);
    // "/dev will be prepended if the path doesn't start with a '/'".
    assert_eq!(
        disk::parse("vg/root,,xvdc").unwrap().target.as_deref(),
        Some("/dev/vg/root")
    );
    assert_eq!(
        disk::parse("/a,raw,xvda,rw,").unwrap().vdev,
        "xvda",
        "a trailing comma"
    );
    let empty_cd = disk::parse(",,hdd,cdrom").unwrap();
    assert_eq!(empty_cd.target, None);
    let flags = disk::parse("/a,,xvda,no-discard,direct-io-safe,untrusted").unwrap();
    assert!(!flags.discard && flags.direct_io_safe && !flags.trusted);
    // NBD targets are kept as written, for the backend's NBD engine (xl
    // hands them to QEMU); a bare device name is still under /dev.
    for t in [
        "nbd+unix:///exp?socket=/run/n.sock",
        "nbd://10.0.0.2:10809/exp",
        "nbd:unix:/run/n.sock:exportname=e",
    ] {
        let d = disk::parse(&format!("vdev=xvda, target={t}")).unwrap();
        assert_eq!(d.target.as_deref(), Some(t));
    }
    assert_eq!(
        disk::parse("nbd0,raw,xvda").unwrap().target.as_deref(),
        Some("/dev/nbd0")
    );
}

#[test]
fn vbd_numbers_follow_xen_vbd_interface() {
    for (vdev, n) in [
        ("xvda", 51712),
        ("xvda1", 51713),
        ("xvdb", 51728),
        ("xvdp15", 51967),
        ("xvdq", (1 << 28) | (16 << 8)),
        ("xvdaa", (1 << 28) | (26 << 8)),
        ("hda", 768),
        ("hdb", 832),
        ("hdc", 5632),
        ("hdd", 5696),
        ("sda", 2048),
        ("sdb2", 2066),
        ("d0p0", 51712),
        ("d3p7", 51767),
        ("d16p0", (1 << 28) | (16 << 8)),
        ("d0p16", (1 << 28) | 16),
        ("xvda0", 51712),
        ("51712", 51712),
        ("0xca00", 51712),
        ("sdp15", 2303),
    ] {
        assert_eq!(vbd_devid(vdev), Some(n), "{vdev}");
    }
    for bad in [
        "xvd", "hde", "vda", "d", "d0", "xvdA", "d1p256", "sdq", "sda16", "hda64",
    ] {
        assert_eq!(vbd_devid(bad), None, "{bad}");
    }
}

/// Each kind of mistake, with the key and the problem it must name.
#[test]
fn mistakes_are_refused_with_key_and_problem() {
    let cases: &[(&str, &str)] = &[
        ("memory = 64\n", "name: is missing"),
        ("name = \"\"\n", "line 1: name:"),
        ("name = \"a/b\"\n", "line 1: name:"),
        ("name = \"42\"\n", "would read as a domain id"),
        (
            "name = \"a\"\nname = \"b\"\n",
            "line 2: name: is given twice",
        ),
        (
            "name = \"a\"\nmemory = \"lots\"\n",
            "line 2: memory: must be a number",
        ),
        ("name = \"a\"\nmemory = 0\n", "memory: 0 is out of range"),
        (
            "name = \"a\"\nvcpus = 1x\n",
            "vcpus: \"1x\" is not a number",
        ),
        (
            "name = \"a\"\nmemory = 64\nmaxmem = 32\n",
            "maxmem: is less than memory",
        ),
        (
            "name = \"a\"\nbogus = 1\n",
            "line 2: bogus: is not a known key",
        ),
        ("name = \"a\nmemory = 1\n", "name: string is not closed"),
        (
            "name = \"a\"\ndisk = '/a,,xvda'\n",
            "disk: must be a list of strings",
        ),
        ("name = \"a\"\ndisk = [ 1 ]\n", "disk[0]: must be a string"),
        (
            "name = \"a\"\ndisk = [ '/a' ]\n",
            "disk[0]: vdev is missing",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,vda' ]\n",
            "disk[0]: vdev: \"vda\"",
        ),
        (
            "name = \"a\"\ndisk = [ 'tap2:/a,xvda' ]\n",
            "disk[0]: target: \"tap2:/a\"",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda,backend=dd' ]\n",
            "disk[0]: backend: \"dd\"",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda,specification=virtio' ]\n",
            "disk[0]: specification",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,vmdk,xvda' ]\n",
            "disk[0]: format: \"vmdk\"",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda,rx' ]\n",
            "disk[0]: access: \"rx\"",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda,rw,extra' ]\n",
            "disk[0]: unexpected parameter",
        ),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda', '/b,,xvda' ]\n",
            "disk[1]: vdev xvda is already used",
        ),
        ("name = \"a\"\ndisk = [ ',,xvda' ]\n", "disk[0]: target"),
        (
            "name = \"a\"\ndisk = [ '/a,,xvda,colour=red' ]\n",
            "disk[0]: unknown parameter",
        ),
        (
            "name = \"a\"\nvif = [ 'mac=00:16:3e:01:02' ]\n",
            "vif[0]: mac",
        ),
        (
            "name = \"a\"\nvif = [ 'mac=01:00:00:00:00:00' ]\n",
            "multicast",
        ),
        (
            "name = \"a\"\nvif = [ 'speed=fast' ]\n",
            "vif[0]: \"speed\" is not a vif parameter",
        ),
        ("name = \"a\"\npci = [ '03:00' ]\n", "pci[0]:"),
        ("name = \"a\"\npci = [ '03:20.0' ]\n", "pci[0]:"),
        (
            "name = \"a\"\non_crash = \"explode\"\n",
            "on_crash: \"explode\" is not destroy",
        ),
        (
            "name = \"a\"\nuuid = \"1234\"\n",
            "uuid: \"1234\" is not a UUID",
        ),
        (
            "name = \"a\" memory = 1\n",
            "name: unexpected text after the value",
        ),
        ("name = \"a\"\nmemory 64\n", "line 2: memory: expected ="),
    ];
    for (text, want) in cases {
        let e = parse_xl(text).expect_err(text).to_string();
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
}

proptest::proptest! {
    #[test]
    fn no_input_makes_the_parsers_panic(text in "[ -~\n]{0,200}", spec in "[ -~]{0,60}") {
        let _ = parse_xl(&text);
        let _ = parse_toml(&text);
        let _ = disk::parse(&spec);
        let _ = vbd_devid(&spec);
    }
}

/// The syntax examples of xl.cfg(5): pairs separated by newlines or by
/// semicolons; heterogeneous, nested lists (of keys we ignore).
#[test]
fn xl_cfg_man_page_syntax() {
    for text in ["name=\"h0\"\ntype=\"hvm\"\n", "name=\"h0\"; type=\"hvm\"\n"] {
        let c = parse_xl(text).unwrap();
        assert_eq!(c.name, "h0");
        assert_eq!(c.ignored, ["type"]);
    }
    let c = parse_xl(
        "name = 'x'\nusbctrl=[\"version=1,ports=4\", [ 1, 'two' ], 0x10]\nmemory = 0x40\n",
    )
    .unwrap();
    assert_eq!(c.memory_mib, 64);
    assert_eq!(c.ignored, ["usbctrl"]);
}
