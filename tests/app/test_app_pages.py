"""The Streamlit app under AppTest: every page of PAGES, parameters applied, text kept as text."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.main import APP_DIR, PAGES
from icp_core import evaluate, stages
from icp_core.pack import PACK_MODES
from icp_core.params import DEFAULT_ORDER, Params
from icp_core.traverse import METHODS
from icp_core.workspace import Workspace
from tests.app.workspaces import HOSTILE_TEXT, copy_workspace, synthetic_workspace

MAIN = str(APP_DIR / "main.py")


def open_app(workspace: Path | None = None, page: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120)
    if workspace is not None:
        at.session_state["workspace"] = str(workspace)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def apply_button(at: AppTest):
    return next(b for b in at.button if b.label == "Apply")


def shown_metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def stored_metrics(path: Path) -> tuple[Params, dict]:
    with Workspace(path, read_only=True) as ws:
        params = Params.from_dict(ws.load_settings())
        return params, stages.latest_metrics(ws, params)


@pytest.mark.parametrize("page", PAGES, ids=[page.title for page in PAGES])
def test_every_page_runs_on_the_sample(sample_workspace, page):
    at = open_app(sample_workspace, page.file)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert [title.value for title in at.title] == [page.title]
    assert f"k = 10 · order = {DEFAULT_ORDER}" in at.caption[0].value


@pytest.fixture(scope="module")
def unlabelled_workspace(tmp_path_factory) -> Path:
    return synthetic_workspace(tmp_path_factory.mktemp("unlabelled"), until="layout", labels=False)


@pytest.mark.parametrize("page", PAGES, ids=[page.title for page in PAGES])
def test_every_page_runs_on_a_small_unlabelled_corpus(unlabelled_workspace, page):
    at = open_app(unlabelled_workspace, page.file)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "37 documents · k = 5" in at.caption[0].value


def test_overview_shows_the_stored_metrics_next_to_random(sample_workspace):
    at = open_app(sample_workspace)
    _, stored = stored_metrics(sample_workspace)
    shown = shown_metrics(at)
    assert shown["Adjacent similarity"] == f"{stored['adjacent_sim_mean']:.3f}"
    adjacent = next(m for m in at.metric if m.label == "Adjacent similarity")
    gain = stored["adjacent_sim_mean"] - stored["random"]["adjacent_sim_mean"]
    assert adjacent.delta.startswith(f"{gain:+.3f} vs random")


def test_applying_k_and_method_updates_the_metrics(sample_copy):
    at = open_app(sample_copy)
    before = shown_metrics(at)
    assert at.number_input(key="k").value == 10
    assert apply_button(at).disabled  # nothing to apply yet
    at.number_input(key="k").set_value(5)
    at.selectbox(key="order").select("random")
    at.run()
    # the edit is marked, with what it re-runs; the header still shows the applied values
    marker = " ".join(w.value for w in at.sidebar.warning)
    assert "Not applied yet" in marker and "k: 10 → **5**" in marker, marker
    assert "re-runs dedup, order, pack, metrics, about" in marker, marker
    assert "k = 10 · order" in at.caption[0].value
    assert "2 edits in the sidebar not applied" in at.caption[0].value
    apply_button(at).click()
    at.run()
    assert not at.exception, at.exception
    params, stored = stored_metrics(sample_copy)
    assert (params.k, params.order) == (5, "random")
    after = shown_metrics(at)
    assert after["Adjacent similarity"] == f"{stored['adjacent_sim_mean']:.3f}"
    assert after["Jump rate"] == f"{stored['jump_rate']:.3f}"
    # a random order is random packing: similarity drops to the baseline, nearly all jumps
    assert float(after["Adjacent similarity"]) < float(before["Adjacent similarity"]) - 0.2
    assert float(after["Jump rate"]) > 0.8 > float(before["Jump rate"])
    assert "k = 5 · order = random" in at.caption[0].value
    assert any(
        "re-ran dedup, order, pack, metrics; reused embed, knn" in c.value
        for c in at.sidebar.caption
    )

    at.number_input(key="k").set_value(20)
    at.selectbox(key="order").select("icp")
    at.run()
    assert not at.sidebar.warning[0].value.count("kNN search")  # 20 <= the 32 stored
    apply_button(at).click()
    at.run()
    _, stored = stored_metrics(sample_copy)
    assert shown_metrics(at)["Adjacent similarity"] == f"{stored['adjacent_sim_mean']:.3f}"
    assert stored["k"] == 20 and stored["order"] == "icp"


def test_invalid_tokenizer_is_refused_without_running(sample_copy):
    at = open_app(sample_copy)
    at.text_input(key="tokenizer").input("/no/such/tokenizer.json").run()
    apply_button(at).click()
    at.run()
    assert not at.exception
    assert any("/no/such/tokenizer.json" in e.value for e in at.sidebar.error)
    assert stored_metrics(sample_copy)[0].tokenizer is None


def test_document_text_is_shown_as_text_never_as_markup(tmp_path):
    path = synthetic_workspace(tmp_path)
    at = open_app(path, "pages/contexts.py")
    at.text_input(key="context_query").input("alert(1)").run()
    assert not at.exception, at.exception
    found = at.dataframe[0].value
    assert found["preview"].tolist() == [HOSTILE_TEXT]
    doc = int(found["doc"].iloc[0])
    at.selectbox(key="context_doc").select(doc).run()
    assert at.code[0].value == HOSTILE_TEXT
    rendered = [e.value for e in (*at.markdown, *at.caption, *at.title, *at.subheader)]
    assert not any("alert(1)" in value or "evil.example" in value for value in rendered)

    at.switch_page("pages/graph.py").run()
    assert not at.exception, at.exception
    assert at.text[0].value.startswith("databases-0")
    assert not any("alert(1)" in e.value for e in (*at.markdown, *at.caption))


def test_opens_on_the_bundled_sample_without_arguments(sample_workspace, app_cache):
    copy_workspace(sample_workspace, app_cache)  # as if built on an earlier start
    at = open_app()
    assert not at.exception, at.exception
    assert "sample.duckdb** (bundled sample)" in at.caption[0].value


def test_parameter_form_keeps_its_values_across_pages(sample_workspace):
    at = open_app(sample_workspace)
    for page in (*PAGES, *PAGES):
        at.switch_page(page.file).run()
        assert at.number_input(key="k").value == 10, page.title
        assert at.number_input(key="context_length").value == 8192, page.title
        assert at.checkbox(key="dedup").value, page.title


def test_opens_the_workspace_given_after_double_dash(unlabelled_workspace, monkeypatch):
    """`icp app --workspace WS` runs `streamlit run app/main.py -- --workspace WS`."""
    monkeypatch.setattr("sys.argv", ["app/main.py", "--workspace", str(unlabelled_workspace)])
    at = open_app()
    assert not at.exception, at.exception
    assert at.caption[0].value.startswith("**synthetic.duckdb** · 37 documents")


def test_a_missing_workspace_is_a_clear_error(tmp_path):
    at = open_app(tmp_path / "nowhere.duckdb")
    assert not at.exception
    assert "no such workspace" in at.error[0].value


def test_k_above_the_stored_depth_warns_of_a_new_search_and_map(sample_workspace):
    at = open_app(sample_workspace)
    at.number_input(key="k").set_value(40).run()
    marker = at.sidebar.warning[0].value
    assert "a new kNN search (k above the 32 stored) and map" in marker, marker
    assert "re-runs knn, dedup, order, pack, metrics, layout" in marker, marker
    next(b for b in at.button if b.label == "Undo").click().run()
    assert at.number_input(key="k").value == 10
    assert not at.sidebar.warning


def test_compare_puts_another_method_next_to_the_applied_one(sample_workspace):
    at = open_app(sample_workspace, "pages/compare.py")
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["metric", "applied"] and "random packing" in table
    at.selectbox(key="compare_order").select("random").run()
    assert not at.exception, at.exception
    assert "random · k = 10" in at.dataframe[0].value.columns[2]
    assert len(at.dataframe) == 3  # metrics, and the chosen document's context on each side


def eval_table(at: AppTest):
    return next(f.value for f in at.dataframe if "shown above" in f.value.columns)


def test_compare_shows_what_icp_eval_stored_and_evaluates_the_compared_setting(sample_copy):
    with Workspace(sample_copy) as ws:  # what `icp eval --order ... --pack split` stores
        corpus = evaluate.load_corpus(ws, Params.from_dict(ws.load_settings()))
        evaluate.store(ws, corpus, evaluate.evaluate(corpus, [DEFAULT_ORDER, "icp"], ["split"]))
    at = open_app(sample_copy, "pages/compare.py")
    table = eval_table(at)
    # one setting evaluated: identifying columns first, the setting named in the caption
    assert list(table.columns[:3]) == ["order", "pack", "shown above"]
    assert list(table["order"]) == ["icp", DEFAULT_ORDER]
    assert list(table["shown above"]) == ["", "applied"]
    assert any("applied · k = 10 · L = 8,192: top-1" in c.value for c in at.caption)
    at.selectbox(key="compare_order").select("icp").run()
    assert list(eval_table(at)["shown above"]) == ["compared", "applied"]

    at.number_input(key="compare_k").set_value(5).run()
    assert any("Not evaluated yet at k = 5" in i.value for i in at.info)
    next(b for b in at.button if b.label == "Evaluate compared setting").click()
    at.run()  # starts the job, follows its progress, then shows what it stored
    assert not at.exception, at.exception
    table = eval_table(at)
    compared = table[table["setting"].str.startswith("compared · k = 5")]
    assert len(compared) == len(METHODS) * len(PACK_MODES)
    assert list(compared.loc[compared["shown above"] != "", "order"]) == ["icp"]
    assert not [i.value for i in at.info if "Not evaluated" in i.value]


def test_two_hops_show_the_strongest_neighbours_and_more_on_request(sample_workspace):
    at = open_app(sample_workspace, "pages/graph.py")
    at.radio(key="graph_hops").set_value(2).run()
    assert not at.exception, at.exception
    shown = next(c.value for c in at.caption if c.value.startswith("Second hop"))
    assert "each neighbour's 3 strongest of 10" in shown, shown
    few = int(shown.split("(")[1].split()[0])
    assert few <= 1 + 10 + 10 * 3 + 4  # the document, its k, 3 each, the path around it
    next(b for b in at.button if b.label == "Show more").click().run()
    shown = next(c.value for c in at.caption if c.value.startswith("Second hop"))
    assert "6 strongest" in shown and int(shown.split("(")[1].split()[0]) > few


def test_export_writes_the_folder_and_lists_each_file_with_its_size_and_checksum(
    sample_workspace, tmp_path
):
    at = open_app(sample_workspace, "pages/export.py")
    at.text_input(key="export_out_jsonl").set_value(str(tmp_path / "out")).run()
    next(b for b in at.button if b.label == "Write").click().run()
    assert not at.exception, at.exception
    files = at.dataframe[0].value
    assert list(files.columns) == ["file", "bytes", "sha256"]
    assert "manifest.json" not in set(files["file"])  # the manifest lists the others
    for name, size in zip(files["file"], files["bytes"], strict=True):
        assert (tmp_path / "out" / name).stat().st_size == size
