//! Replays every file of `fuzz/corpus/<target>/` through its target's body (the same function
//! the libFuzzer binary calls), on stable Rust and without libFuzzer: the corpus (hand-written
//! seeds, inputs the fuzzer found that add coverage, and fixed crashes) is a regression suite
//! that CI runs as an ordinary test.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let inputs = files(&dir);
    assert!(
        !inputs.is_empty(),
        "no corpus for {target} in {}",
        dir.display()
    );
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| body(&data));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("{target}: {} fails: {why}", path.display());
        }
    }
    inputs.len()
}

#[test]
fn every_target_has_a_corpus_folder_and_every_folder_a_target() {
    let names: Vec<&str> = switchboard_fuzz::targets().iter().map(|t| t.0).collect();
    for name in &names {
        assert!(corpus(name).is_dir(), "no fuzz/corpus/{name}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let name = entry.expect("a corpus folder").file_name();
        let name = name.to_string_lossy();
        assert!(
            names.contains(&name.as_ref()),
            "fuzz/corpus/{name} belongs to no target"
        );
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let n = replay(stringify!($name), switchboard_fuzz::$name);
            eprintln!("{}: {n} inputs replayed", stringify!($name));
        }
    )*};
}

replay_tests!(
    mime,
    chat_frame,
    sms_webhook,
    meta_webhook,
    voice_webhook,
    order_webhook
);
