//! `dom0kit`: one binary, many subcommands. Only the foundation (wire ABI and
//! shared rings) exists so far; the subcommands arrive with their issues.

use std::process::ExitCode;

const USAGE: &str = "usage: dom0kit <command>

commands:
  demo      bring up a simulated Xen host with a guest (not built yet)
  version   print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") => {
            println!("dom0kit {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("demo") => {
            eprintln!(
                "dom0kit demo: not built yet. The wire ABI and the shared rings exist; \
                 the simulated hypervisor, xenstored and the toolstack do not."
            );
            ExitCode::from(2)
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
