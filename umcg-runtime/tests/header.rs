//! The committed C header `include/umcg.h` is what cbindgen generates from `src/ffi.rs` and
//! `umcg_abi::UmcgTask` with `cbindgen.toml`: this test regenerates it in memory and fails if
//! the file differs. With `UPDATE_HEADER=1` it rewrites the file instead.
#![cfg(not(umcg_loom))]

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed to generate the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);

    let path = crate_dir.join("include").join("umcg.h");
    if std::env::var_os("UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).expect("write include/umcg.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed != generated {
        let committed = String::from_utf8_lossy(&committed);
        let generated = String::from_utf8_lossy(&generated);
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/umcg.h is stale (first difference at line {}):\n  committed: {:?}\n  \
             generated: {:?}\nregenerate with: UPDATE_HEADER=1 cargo test -p umcg-runtime \
             --test header",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            generated.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
