// Builds dbtel-ebpf for bpfel-unknown-none (nightly + bpf-linker) and leaves the
// object in OUT_DIR, where src/attach.rs embeds it with include_bytes_aligned!.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbtel-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dbtel-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
