//! Layout conformance: every wire structure's size and field offsets, every
//! constant, the xenstore error table, the ring-size rule and the Toeplitz
//! hash are compared with what a C compiler computes from the system's Xen
//! and Linux headers. Missing headers fail the test: it never passes vacuously.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use abi::pod::TypeLayout;

/// What the C program must print for one check, and how to print it.
struct Check {
    /// A C expression.
    expr: String,
    /// What we expect it to print.
    expected: String,
    /// `printf` conversion for the expression.
    is_string: bool,
}

impl Check {
    fn num(expr: impl Into<String>, expected: impl Into<i128>) -> Check {
        Check {
            expr: expr.into(),
            expected: expected.into().to_string(),
            is_string: false,
        }
    }
    fn string(expr: impl Into<String>, expected: &str) -> Check {
        Check {
            expr: expr.into(),
            expected: expected.to_string(),
            is_string: true,
        }
    }
}

const HEADERS_64: &str = r#"
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#define XEN_NETIF_DEFINE_TOEPLITZ
#include <xen/io/netif.h>
#include <xen/io/pciif.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>
#include <xen/io/protocols.h>
#include <xen/gntdev.h>
#include <xen/gntalloc.h>
#include <xen/evtchn.h>
#include <xen/privcmd.h>
"#;

const HEADERS_32: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/xen.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
"#;

fn layout_checks(layouts: &[TypeLayout], out: &mut Vec<Check>) {
    for l in layouts {
        out.push(Check::num(format!("sizeof({})", l.c_type), l.size as i128));
        for f in l.fields.iter().filter(|f| !f.c_name.starts_with('_')) {
            out.push(Check::num(
                format!("offsetof({}, {})", l.c_type, f.c_name),
                f.offset as i128,
            ));
            out.push(Check::num(
                format!("sizeof((({} *)0)->{})", l.c_type, f.c_name),
                f.size as i128,
            ));
        }
    }
}

fn checks_64() -> Vec<Check> {
    let mut v = Vec::new();
    layout_checks(&abi::all_layouts(), &mut v);
    for c in abi::all_constants() {
        v.push(Check::num(c.c_name, c.value));
    }
    v.push(Check::num(
        "sizeof(xsd_errors) / sizeof(xsd_errors[0])",
        abi::xs_wire::XSD_ERRORS.len() as i128,
    ));
    for (i, (errno, name)) in abi::xs_wire::XSD_ERRORS.iter().enumerate() {
        v.push(Check::num(format!("xsd_errors[{i}].errnum"), *errno));
        v.push(Check::string(format!("xsd_errors[{i}].errstring"), name));
    }
    for (expr, s) in [
        (
            "XEN_IO_PROTO_ABI_X86_32",
            abi::blkif::XEN_IO_PROTO_ABI_X86_32,
        ),
        (
            "XEN_IO_PROTO_ABI_X86_64",
            abi::blkif::XEN_IO_PROTO_ABI_X86_64,
        ),
        ("XS_WRITE_NONE", abi::xs_wire::XS_WRITE_NONE),
        ("XS_WRITE_CREATE", abi::xs_wire::XS_WRITE_CREATE),
        ("XS_WRITE_CREATE_EXCL", abi::xs_wire::XS_WRITE_CREATE_EXCL),
        ("XEN_PCI_MAGIC", abi::pciif::XEN_PCI_MAGIC),
    ] {
        v.push(Check::string(expr, s));
    }
    // The ring-size rule, for every protocol's slot size and 1..16 pages.
    use abi::blkif::{BlkifRequest, BlkifResponse};
    use abi::netif::*;
    use abi::ring::{entry_size, ring_bytes, ring_size};
    let protocols = [
        ("blkif", entry_size::<BlkifRequest, BlkifResponse>()),
        ("netif_tx", entry_size::<NetifTxRequest, NetifTxResponse>()),
        ("netif_rx", entry_size::<NetifRxRequest, NetifRxResponse>()),
        (
            "xen_netif_ctrl",
            entry_size::<NetifCtrlRequest, NetifCtrlResponse>(),
        ),
    ];
    for (name, entry) in protocols {
        v.push(Check::num(
            format!("sizeof(union {name}_sring_entry)"),
            entry as i128,
        ));
        for order in 0..=abi::ring::XENBUS_MAX_RING_ORDER {
            let bytes = ring_bytes(order);
            v.push(Check::num(
                format!("__CONST_RING_SIZE({name}, {bytes})"),
                ring_size(bytes, entry),
            ));
        }
    }
    // The Toeplitz hash, on a few keys and inputs of awkward lengths.
    let key: Vec<u8> = (0..40u32).map(|i| (i * 37 + 11) as u8).collect();
    for (klen, blen) in [(40, 12), (40, 36), (8, 8), (3, 5), (0, 4), (40, 0)] {
        let buf: Vec<u8> = (0..blen as u32).map(|i| (i * 73 + 5) as u8).collect();
        let expected = abi::netif::toeplitz_hash(&key[..klen], &buf);
        v.push(Check::num(
            format!(
                "xen_netif_toeplitz_hash((const uint8_t[]){{{}}}, {klen}, (const uint8_t[]){{{}}}, {blen})",
                c_bytes(&key[..klen]),
                c_bytes(&buf)
            ),
            expected,
        ));
    }
    v
}

fn c_bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "0".into();
    }
    b.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn checks_32() -> Vec<Check> {
    let mut v = Vec::new();
    layout_checks(abi::blkif::x86_32::LAYOUTS, &mut v);
    let rsp = std::mem::size_of::<abi::blkif::x86_32::BlkifResponse>();
    let req = std::mem::size_of::<abi::blkif::x86_32::BlkifRequest>();
    v.push(Check::num(
        "sizeof(union blkif_sring_entry)",
        req.max(rsp) as i128,
    ));
    v.push(Check::num(
        "__CONST_RING_SIZE(blkif, 4096)",
        abi::ring::ring_size(4096, req.max(rsp)),
    ));
    v
}

fn program(headers: &str, checks: &[Check]) -> String {
    let mut src = String::from(headers);
    src.push_str("int main(void) {\n");
    for (i, c) in checks.iter().enumerate() {
        if c.is_string {
            writeln!(src, "    printf(\"{i} %s\\n\", {});", c.expr).unwrap();
        } else {
            writeln!(src, "    printf(\"{i} %lld\\n\", (long long)({}));", c.expr).unwrap();
        }
    }
    src.push_str("    return 0;\n}\n");
    src
}

fn require_headers() {
    for h in [
        "xen/io/ring.h",
        "xen/io/blkif.h",
        "xen/grant_table.h",
        "xen/gntdev.h",
    ] {
        let p = Path::new("/usr/include").join(h);
        assert!(
            p.exists(),
            "{} is missing: install libxen-dev and linux-libc-dev (the README's test command does)",
            p.display()
        );
    }
}

fn run_c(name: &str, flags: &[&str], headers: &str, checks: &[Check]) -> Vec<String> {
    require_headers();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi-layout");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, program(headers, checks)).unwrap();
    // Linux's privcmd.h includes the kernel-internal <xen/interface/xen.h>;
    // outside the kernel tree, Xen's own <xen/xen.h> is that header.
    let shim = dir.join("shim/xen/interface");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(shim.join("xen.h"), "#include <xen/xen.h>\n").unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(flags)
        .arg("-I")
        .arg(dir.join("shim"))
        .args(["-std=gnu11", "-Wall", "-Wno-unused-function", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc} {flags:?} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "{} failed", exe.display());
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn compare(name: &str, checks: &[Check], lines: &[String]) {
    assert_eq!(
        lines.len(),
        checks.len(),
        "{name}: the C program printed a line per check"
    );
    let mut wrong = Vec::new();
    for (i, (c, line)) in checks.iter().zip(lines).enumerate() {
        let got = line.strip_prefix(&format!("{i} ")).unwrap_or(line);
        if got != c.expected {
            wrong.push(format!(
                "  {}: C says {got}, Rust says {}",
                c.expr, c.expected
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn x86_64_layouts_constants_and_tables_match_the_c_headers() {
    let checks = checks_64();
    assert!(checks.len() > 500, "the check list is suspiciously short");
    let lines = run_c("layout64", &["-m64"], HEADERS_64, &checks);
    compare("x86_64", &checks, &lines);
}

#[test]
fn x86_32_blkif_layouts_match_the_c_headers_built_for_i386() {
    let checks = checks_32();
    let lines = run_c("layout32", &["-m32"], HEADERS_32, &checks);
    compare("x86_32", &checks, &lines);
}

#[test]
fn every_wire_struct_in_the_source_is_in_the_registry() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut declared = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        declared += text.matches("#[c = \"").count();
    }
    let native = abi::all_layouts();
    // The x86_32 list reuses the segment struct, whose layout is the same.
    let only_32 = abi::blkif::x86_32::LAYOUTS
        .iter()
        .filter(|l| !native.contains(l))
        .count();
    let registered = native.len() + only_32;
    assert_eq!(
        declared, registered,
        "a wire_struct! is missing from a LAYOUTS list"
    );
}
