//! Regenerates the checked-in prost code and fails if it differs (then the new code is
//! written in place, so a second run passes once it is committed). `protox` parses the
//! protos in Rust, so no `protoc` is needed.

use std::path::PathBuf;

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let descriptors = protox::compile(
        ["routing.proto", "admin.proto", "bench.proto"],
        [root.join("proto")],
    )
    .expect("the protos parse");
    tonic_prost_build::configure()
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("prost and tonic generate code");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read out dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let fresh = std::fs::read_to_string(entry.path()).expect("read generated");
        let checked_in = root.join("src/gen").join(&name);
        if std::fs::read_to_string(&checked_in).ok().as_deref() != Some(fresh.as_str()) {
            std::fs::write(&checked_in, &fresh).expect("write generated");
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "regenerated stale files, commit them: {stale:?}"
    );
}
