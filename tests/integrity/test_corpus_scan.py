"""The scanner against the corpus: every malicious file flagged, no benign one, nothing run or imported."""

from __future__ import annotations

import sys
from pathlib import Path

from mlwarden.integrity import FindingKind, scan_file

from .corpus import BENIGN, MALICIOUS, UNSCANNABLE, CorpusFile

PAYLOAD_MODULES = ("webbrowser", "runpy", "dill", "pandas", "subprocess")


def test_corpus_has_every_category(corpus: dict[str, CorpusFile]) -> None:
    categories = {item.category for item in corpus.values()}
    assert categories == {MALICIOUS, BENIGN, UNSCANNABLE}
    assert sum(item.malicious for item in corpus.values()) >= 25


def test_every_malicious_file_flagged(corpus: dict[str, CorpusFile]) -> None:
    missed = [item.name for item in corpus.values() if item.malicious and not scan_file(item.path).flagged]
    assert missed == []


def test_no_benign_file_flagged(corpus: dict[str, CorpusFile]) -> None:
    results = {item.name: scan_file(item.path) for item in corpus.values() if item.category == BENIGN}
    false_alarms = {name: [f.message for f in result.findings] for name, result in results.items() if result.flagged}
    assert false_alarms == {}


def test_benign_pickles_report_their_globals(corpus: dict[str, CorpusFile]) -> None:
    result = scan_file(corpus["lenet_state_dict.pt"].path)
    names = {item.qualified_name for item in result.globals}
    assert "torch._utils._rebuild_tensor_v2" in names
    assert "collections.OrderedDict" in names
    assert all(item.allowed for item in result.globals)


def test_non_pickle_model_file_reported(corpus: dict[str, CorpusFile]) -> None:
    result = scan_file(corpus["not_a_pickle.pt"].path)
    assert result.flagged
    assert [finding.kind for finding in result.findings] == [FindingKind.UNSUPPORTED]


def test_scanning_runs_and_imports_nothing(corpus: dict[str, CorpusFile], sentinel: Path) -> None:
    before = set(sys.modules)
    for item in corpus.values():
        scan_file(item.path)
    imported = sorted(name for name in set(sys.modules) - before if name.split(".")[0] in PAYLOAD_MODULES)
    assert imported == []
    assert not sentinel.exists()


def test_payload_globals_named(corpus: dict[str, CorpusFile]) -> None:
    expected = {
        "reduce_os_system.pkl": "posix.system",
        "reduce_exec_protocol4.pkl": "builtins.exec",
        "reduce_eval_protocol0.pkl": "builtins.eval",
        "reduce_subprocess.pkl": "subprocess.call",
        "runpy_run_code.pkl": "runpy._run_code",
        "webbrowser_open.pkl": "webbrowser.open",
        "protocol0_inst.pkl": "os.system",
        "protocol0_obj.pkl": "os.system",
        "memo_indirection.pkl": "os.system",
        "pop_discarded.pkl": "os.system",
        "torch_zip_payload.pt": "posix.system",
        "torch_legacy_payload.pt": "posix.system",
        "joblib_payload.joblib": "posix.system",
        "joblib_payload_zlib.joblib": "posix.system",
        "numpy_object_payload.npy": "posix.system",
    }
    for name, qualified in expected.items():
        assert qualified in scan_file(corpus[name].path).unlisted_globals(), name
