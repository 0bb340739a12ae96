//! Build script: links the `patrol` binary with packed relative relocations (`DT_RELR`) on
//! Linux with glibc, where the toolchain has them (binutils ≥ 2.38, glibc ≥ 2.36; older GNU ld
//! ignores the option with a warning).
//!
//! A position-independent executable carries one 24-byte relocation per pointer in its
//! read-only data (vtables, tables of strings): 1.1 MB of `.rela.dyn` for this binary, which the
//! loader reads at every start and which then stays resident. Packed, the same relocations take
//! a few KiB. The agent's memory goal (BENCHMARKS.md §4) counts every resident page; the binary
//! stays position-independent.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
