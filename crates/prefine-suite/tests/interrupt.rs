//! Ctrl-C during a suite: the interrupted cell is not recorded as a failure and the suite stops
//! (its own process: the stop flag is global).

mod common;

use std::path::Path;

use common::{cut_task, tiny_variant};
use prefine_suite::{run_suite, SuiteConfig};

#[test]
fn a_stop_request_ends_the_suite_without_recording_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cut_task("tc", "sst2", 16, &data);
    let base = tmp.path().join("base");
    tiny_variant(&base, 1, false);
    let text = format!(
        "data_root = \"{}\"\ntasks = [\"tc/sst2\"]\nfractions = [1.0]\nseeds = [1, 2]\n\
         [[variants]]\nname = \"base\"\npath = \"{}\"\n[protocol]\nepochs = 1\nbatch_size = 4\nmax_length = 32\n",
        data.display(),
        base.display()
    );
    let cfg = SuiteConfig::from_toml_str(&text, Path::new("s.toml")).unwrap();
    prefine_train::checkpoint::request_stop();
    let out = tmp.path().join("out");
    let err = run_suite(&cfg, &out).unwrap_err();
    assert!(
        matches!(
            err,
            prefine_suite::Error::Train(prefine_train::Error::Interrupted { .. })
        ),
        "{err}"
    );
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
    assert!(results.is_empty(), "nothing recorded: {results}");
}
