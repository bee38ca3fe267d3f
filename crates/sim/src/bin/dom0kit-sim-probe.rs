//! A scriptable guest process for the sim's tests and benchmarks
//! (see `sim::probe`).
fn main() -> std::process::ExitCode {
    sim::probe::main()
}
