"""The second replication's bookkeeping on synthetic eval JSONs: per-block records, the
cross-block primaries (hierarchical bootstrap, Holm, verdicts), the stop rule, the pilot's
choice of task settings, the equal-FLOPs arm and faithful LongCE's flags."""

import contextlib
import json
import math
import sys
from dataclasses import replace

import numpy as np
import pytest

from bench.quality import block_record, block_report, block_stages, calibrate, selection_report
from bench.quality.block_estimate import arm_scoring
from bench.quality.block_profiles import BLOCK_PROFILES
from bench.quality.block_stages import BlockContext, flops_ratio
from bench.quality.estimate import forward
from bench.quality.jobs import PipelineError, Runner
from tokenweight.trainer.evals.stats import block_t_interval

PROFILE = BLOCK_PROFILES["block-smoke"]  # short 32, long 256: acc_far reads 64 <= d < 256
ITEMS = 300


def fake_eval(rng, accuracy: float, id_nll: float, short_nll: float) -> dict:
    """An eval JSON with the per-item fields the records read; ids equal across arms."""
    retrieval = [
        {
            "id": f"kv/s1/b{i % 4}/{i}",
            "task": ("kv", "passkey")[i % 2],
            "distance": int(rng.integers(64, 256)) if i % 3 else 10,  # a third too near to count
            "credit": float(rng.random() < accuracy),
        }
        for i in range(ITEMS)
    ]
    id_loss = [  # ten repeats per file: the file is the unit the bootstrap resamples
        {
            "id": f"idloss/f{i % 30}/{i}",
            "file": f"f{i % 30}",
            "nll": float(rng.normal(id_nll * (1 + i % 2), 0.1)),
            "tokens": 1 + i % 2,
        }
        for i in range(ITEMS)
    ]
    files = [f"f{i}" for i in range(50)]
    n = rng.integers(20, 40, len(files))
    key_n = np.where(np.arange(len(files)) % 5 == 0, 0, n // 4)  # some files without key tokens
    return {
        "items": {
            "retrieval": retrieval,
            "id_loss": id_loss,
            "short_files": files,
            "short_ce": (n * rng.normal(short_nll, 0.05, len(files))).tolist(),
            "short_n": n.tolist(),
            "long_files": files,
            "key_ce": (key_n * 1.0).tolist(),
            "key_n": key_n.tolist(),
        }
    }


def make_block(tmp_path, block: int, dense_gain: float) -> BlockContext:
    rng = np.random.default_rng(block)
    profile = replace(PROFILE, calibration=tmp_path / "calibration.json", carried=tmp_path)
    ctx = BlockContext(
        profile,
        tmp_path,
        block,
        Runner(tmp_path, ["cpu"], 1),
        "cpu",
        tmp_path,
        tmp_path / "calibration.json",
        tmp_path / "results",
    )
    for arm in (a.name for a in profile.arms):
        gain = dense_gain if arm == "dense" else 0.0
        e = fake_eval(rng, 0.5 + gain, 1.0 - gain, 2.0)
        path = ctx.block_path("eval", f"{arm}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(e))
    return ctx


def test_record_pairs_items_by_id_and_reproduces_brute_force(tmp_path):
    ctx = make_block(tmp_path, 1, 0.2)
    record = block_record.write(ctx)
    dense = json.loads(ctx.block_path("eval", "dense.json").read_text())
    uniform = json.loads(ctx.block_path("eval", "uniform.json").read_text())

    def far(e):
        return np.mean([r["credit"] for r in e["items"]["retrieval"] if 64 <= r["distance"] < 256])

    assert record["deltas"]["dense"]["acc_far"]["value"] == pytest.approx(far(dense) - far(uniform))
    assert record["arms"]["dense"]["endpoints"]["acc_far"]["clusters"] == ITEMS - ITEMS // 3
    # LongPPL leaves out the files where the judge marked nothing (no 0/0).
    assert record["arms"]["dense"]["endpoints"]["longppl_nll"]["clusters"] == 40
    assert record["arms"]["dense"]["endpoints"]["longppl_nll"]["value"] == pytest.approx(1.0)
    repeats = record["arms"]["dense"]["endpoints"]["id_loss"]
    nll = [r["nll"] for r in dense["items"]["id_loss"]]
    tokens = [r["tokens"] for r in dense["items"]["id_loss"]]
    assert repeats["clusters"] == 30 and repeats["value"] == pytest.approx(sum(nll) / sum(tokens))
    wilson = record["arms"]["uniform"]["tasks"]["kv"]
    assert wilson["ci_method"] == "wilson" and wilson["ci"][0] < wilson["value"] < wilson["ci"][1]
    assert record["progress"]["blocks_done"] == [1]
    assert record["progress"]["next"]["next"] == "block 2"
    assert "uniform" not in record["deltas"]


def test_primaries_holm_verdicts_and_stop_rule(tmp_path):
    for block in (1, 2):
        block_record.write(make_block(tmp_path, block, 0.25))
    records = block_report.load_records(tmp_path / "results")
    assert block_report.stop_rule(records)["next"] == "block 3"  # never before 3 blocks
    record = block_record.write(make_block(tmp_path, 3, 0.25))
    assert record["progress"]["next"]["stop"]  # a gain of 0.25 is wholly above +0.02
    records = block_report.load_records(tmp_path / "results")
    rows = {r["endpoint"]: r for r in block_report.primaries(records)}
    acc, id_loss, short = rows["acc_far"], rows["id_loss"], rows["short_nll"]
    pooled = [
        np.concatenate([r["pairs"]["dense"]["acc_far"][side][0] for r in records])
        for side in ("arm", "reference")
    ]
    assert acc["value"] == pytest.approx(pooled[0].mean() - pooled[1].mean())
    assert len(acc["per_block"]) == 3 and acc["verdict"] == "held"
    assert id_loss["verdict"] == "held"  # the loss fell by ~0.25 nats per token
    assert short["verdict"] in ("equivalent", "not resolved")  # no short-context effect
    # Holm: the smallest p times 3, then monotone.
    ps = sorted(r["p"] for r in rows.values())
    holms = sorted(r["holm"]["p_holm"] for r in rows.values())
    assert holms[0] == pytest.approx(min(1.0, 3 * ps[0]))
    assert all(h >= p for h, p in zip(holms, ps))
    # How firm each verdict is: redrawn over seeds, with more replicates, and by t over blocks.
    firm = {f["endpoint"]: f for f in block_report.firmness(records, list(rows.values()))}
    acc_firm = firm["acc_far"]
    assert acc_firm["seeds"] == block_report.FIRMNESS_SEEDS
    assert acc_firm["same_verdict_seeds"] == acc_firm["seeds"]  # +0.25 is far from the bound
    assert acc_firm["ci_many"][0] < acc["value"] < acc_firm["ci_many"][1]
    assert acc_firm["ci_block_t"] == pytest.approx(block_t_interval(acc["per_block"]))
    assert acc_firm["verdict_many"] == acc_firm["verdict_block_t"] == "held"


def test_report_fills_its_section(tmp_path):
    for block in (1, 2):
        ctx = make_block(tmp_path, block, 0.1)
        if block == 2:  # block 2 has the diagnostics with the extended trainee's logp_long
            scorers = [{"auroc": 0.51, "auroc_hybrid": 0.81}, {"auroc": 0.52, "auroc_hybrid": 0.83}]
            diagnose = {
                "settings": {"long_model": "extend/uniform/model"},
                "rank_agreement": {"pooled": 0.7},
                "rank_agreement_hybrid": {"pooled": 0.9},
                "scorers": scorers,
                "repeat_tokens": 5,
                "tokens": 50,
            }
            ctx.block_path("diagnose.json").write_text(json.dumps(diagnose))
            stages = [{"stage": "extend", "block": 2, "wall_s": 120.0}]
            stages += [{"stage": "extend", "block": 2, "wall_s": 0.0}]  # a later call's skip
            (tmp_path / "stages.jsonl").write_text("".join(json.dumps(x) + "\n" for x in stages))
        record = block_record.write(ctx)
    from bench.quality.block_estimate import extension_flops

    all_arms = record["progress"]["training_tflops"]["extend-all-arms"]
    assert all_arms == pytest.approx(extension_flops(PROFILE) / 120.0 / 1e12, rel=1e-2)
    assert record["progress"]["stage_seconds"] == {"extend": 120.0}
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"before\n{block_report.BEGIN}\nold\n{block_report.END}\nafter\n")
    summary = block_report.write_report(tmp_path / "results", doc, tmp_path / "plots")
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| dense-weak |" in text and (tmp_path / "plots" / "quality_blocks.png").is_file()
    assert "dense minus uniform-flops" in text and "| short-context loss, first window" in text
    assert "How firm each verdict is" in text and " of 20 | [" in text
    assert "| 2 | 0.700 / 0.900 | 0.510 / 0.810 | 0.520 / 0.830 |" in text
    assert summary["blocks"] == [1, 2] and summary["stop_rule"]["next"] == "block 3"
    assert json.loads((tmp_path / "results" / "quality_summary.json").read_text())["blocks"] == [
        1,
        2,
    ]
    ratio = summary["weak_to_strong"]["acc_far"]
    dense, weak = (summary["comparisons"][a]["acc_far"]["value"] for a in ("dense", "dense-weak"))
    assert ratio["value"] == pytest.approx(weak / dense)


def test_dense_against_equal_flops_pairs_the_two_arms_item_by_item(tmp_path):
    for block in (1, 2):
        block_record.write(make_block(tmp_path, block, 0.2))
    records = block_report.load_records(tmp_path / "results")
    summary = block_report.summarize(records)
    d = summary["dense_vs_equal_flops"]["acc_far"]
    credits = {
        arm: np.concatenate([r["pairs"][arm]["acc_far"]["arm"][0] for r in records])
        for arm in ("dense", "uniform-flops")
    }
    assert d["value"] == pytest.approx(credits["dense"].mean() - credits["uniform-flops"].mean())
    assert d["ci"][0] < d["value"] < d["ci"][1] and len(d["per_block"]) == 2
    # Paired within each block: per block, the mean of the item-wise differences.
    first = records[0]["pairs"]
    diff = np.asarray(first["dense"]["acc_far"]["arm"][0]) - first["uniform-flops"]["acc_far"]["arm"][0]
    assert d["per_block"][0] == pytest.approx(diff.mean())
    # Two arms evaluated on different items are refused, not silently misaligned.
    first["uniform-flops"]["acc_far"]["reference"][0] = first["uniform-flops"]["acc_far"]["reference"][0][:-1]
    with pytest.raises(PipelineError, match="not evaluated on the same items"):
        block_report.compare(records, "dense", "acc_far", "uniform-flops")


def test_calibration_picks_inside_the_range_nearest_its_middle():
    sweep = [
        {"flags": {"--n": n}, "accuracy": a, "items": 200}
        for n, a in ((0, 0.98), (4, 0.80), (8, 0.55), (16, 0.31), (32, 0.25))
    ]
    best = calibrate.pick(sweep, (0.3, 0.85))
    assert best["flags"] == {"--n": 8} and best["in_range"]
    outside = calibrate.pick([sweep[0], sweep[4]], (0.3, 0.85))
    assert (
        outside["flags"] == {"--n": 32} and not outside["in_range"]
    )  # 0.05 below beats 0.13 above
    e = {
        "items": {
            "retrieval": [
                {"task": "kv", "distance": 70, "credit": 1.0},
                {"task": "kv", "distance": 300, "credit": 0.0},  # beyond the range
                {"task": "passkey", "distance": 70, "credit": 0.0},
            ]
        }
    }
    assert calibrate.far_accuracy(e, "kv", 64, 256) == {"accuracy": 1.0, "items": 1}


def test_blocks_refuse_a_missing_or_foreign_calibration(tmp_path):
    ctx = make_block(tmp_path, 1, 0.0)
    with pytest.raises(PipelineError, match="run the pilot"):
        calibrate.eval_flags(ctx)
    ctx.calibration.write_text(json.dumps({"profile": "block", "tasks": {}}))
    with pytest.raises(PipelineError, match="made for profile 'block'"):
        calibrate.eval_flags(ctx)
    ctx.calibration.write_text(
        json.dumps(
            {
                "profile": PROFILE.name,
                "tasks": {"kv": {"flags": {"--kv-pairs": 64}}, "idrecall": {"flags": {}}},
            }
        )
    )
    assert calibrate.eval_flags(ctx) == ["--kv-pairs", "64"]


def test_equal_flops_arm_and_published_longce():
    p = BLOCK_PROFILES["block"]
    train = 3 * forward(p.trainee, p.vocab_size, p.long_len)
    # The dense arm's frozen scorer: one pass over the first 512 tokens, then ceil(3584/384)
    # = 10 chunks of 512: 11 forwards of 512 tokens per sequence.
    scoring = 11 * forward(p.trainee, p.vocab_size, 512)
    assert flops_ratio(p) == pytest.approx((train + scoring) / train)
    arms = {a.name: a for a in p.arms}
    assert arm_scoring(p, arms["dense-weak"]) < arm_scoring(p, arms["dense"])
    assert arms["longce"].trainer_flags(p.short_len) == [
        "--weighting",
        "longce",
        "--gamma",
        "5.0",
        "--score-source",
        "self",
        "--window",
        "640",
        "--stride",
        "128",
    ]
    assert arms["dense"].trainer_flags(p.short_len)[-2:] == ["--window", "512"]

    # The trainee ~30M parameters, the weak scorer about a quarter of it.
    def params(shape):
        d, kv = shape.hidden_size, shape.num_key_value_heads * shape.head_dim
        layer = 2 * d * d + 2 * d * kv + 3 * d * shape.intermediate_size
        return shape.num_hidden_layers * layer + p.vocab_size * d

    assert 28e6 < params(p.trainee) < 31e6
    assert 0.2 < params(p.weak) / params(p.trainee) < 0.3 and params(p.weak) * 2 < 15e6
    assert math.ceil(p.pretrain_tokens / (p.pretrain.batch * p.short_len)) == p.pretrain_steps


def test_block_export_keeps_results_and_drops_models(tmp_path):
    from bench.quality import handoff

    work, repo = tmp_path / "work", tmp_path / "repo"
    files = {
        work / "block-1" / "eval" / "dense.json": "{}",
        work / "block-1" / "extend" / "dense" / "metrics.jsonl": "{}\n",
        work / "block-1" / "extend" / "dense" / "model" / "config.json": "{}",  # a model: stays
        work / "block-1" / "scorer" / "base" / "config.json": "{}",  # rebuilt: stays
        work / "corpus" / "manifest.json": "{}",
        work / "corpus" / "train.jsonl": "{}\n",  # rebuilt from the machine's files: stays
        repo / "bench" / "results" / "quality_block1.json": "{}",
        repo / "bench" / "quality" / "carried" / "weak" / "config.json": "{}",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    repo_paths = [repo / "bench" / "results", repo / "bench" / "quality" / "carried"]
    handoff.export(work, repo_paths, repo, tmp_path / "out", {})
    work2, repo2 = tmp_path / "work2", tmp_path / "repo2"
    handoff.unpack(tmp_path / "out", work2, repo2)
    came = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*2/**/*") if p.is_file()}
    assert came == {
        "work2/block-1/eval/dense.json",
        "work2/block-1/extend/dense/metrics.jsonl",
        "work2/corpus/manifest.json",
        "repo2/bench/results/quality_block1.json",
        "repo2/bench/quality/carried/weak/config.json",
    }


def test_selection_arms_train_on_the_selection_with_equal_steps(tmp_path, monkeypatch):
    """--selection-arms trains top/control x uniform/dense beside uniform and dense; each
    trains on its selection's shards from the same base for the same steps as the others."""
    p = replace(BLOCK_PROFILES["block"], selection_arms=True)
    arms = {a.name: a for a in p.arms}
    assert set(arms) == {
        "uniform", "dense", "top-uniform", "top-dense", "control-uniform", "control-dense"
    }
    assert arms["top-dense"].trainer_flags(p.short_len) == arms["dense"].trainer_flags(p.short_len)
    ctx = BlockContext(p, tmp_path, 1, Runner(tmp_path, ["cpu"], 1), "cpu", tmp_path,
                       tmp_path / "calibration.json", tmp_path / "results")
    for data in ("top", "control"):
        ctx.block_path("select", data).mkdir(parents=True)
        (ctx.block_path("select", data) / "index.json").write_text("{}")
    jobs = []
    monkeypatch.setattr(Runner, "run_parallel", lambda self, todo: jobs.extend(todo))
    monkeypatch.setattr(block_stages, "scorer_server", lambda *a: contextlib.nullcontext("url"))
    block_stages.extend(ctx)
    argv = {job.name.rsplit("extend-", 1)[1]: job.argv for job in jobs}
    data = {name: a[a.index("--data") + 1] for name, a in argv.items()}
    steps = {name: a[a.index("--max-steps") + 1] for name, a in argv.items()}
    assert data["top-uniform"] == data["top-dense"] == str(ctx.block_path("select", "top"))
    assert data["control-dense"] == str(ctx.block_path("select", "control"))
    assert data["uniform"] == data["dense"] == str(ctx.path("shards-long"))
    assert steps["top-dense"] == steps["control-uniform"] == steps["uniform"]


def make_selection_block(tmp_path, block: int, top_gain: float) -> BlockContext:
    """A selection block's evals: the top arms gain `top_gain` in accuracy, the rest none."""
    ctx = make_block(tmp_path, block, 0.0)
    ctx.profile = replace(ctx.profile, selection_arms=True)
    rng = np.random.default_rng(100 + block)
    for arm in (a.name for a in ctx.profile.arms):
        gain = top_gain if arm.startswith("top-") else 0.0
        path = ctx.block_path("eval", f"{arm}.json")
        path.write_text(json.dumps(fake_eval(rng, 0.5 + gain, 1.0, 2.0)))
    select = ctx.block_path("select")
    select.mkdir(parents=True, exist_ok=True)
    chosen = {"documents": 7, "tokens": 9000, "rows": 30, "dropped_tokens": 0, "indices": []}
    (select / "selection.json").write_text(json.dumps({"arms": {"top": chosen, "control": chosen}}))
    return ctx


def test_selection_blocks_report_apart_from_the_replication(tmp_path):
    for block in (1, 2, 3):
        block_record.write(make_block(tmp_path, block, 0.25))  # the replication stops here
    results = tmp_path / "results"
    before = block_report.primaries(block_report.load_records(results))
    assert block_report.block_refusal(results, 4, selection=False).startswith(
        "the replication stopped after block 3"
    )
    assert "is the replication's" in block_report.block_refusal(results, 2, selection=True)
    assert block_report.block_refusal(results, 3, selection=False) is None  # a rerun of a block
    assert block_report.block_refusal(results, 4, selection=True) is None
    record = block_record.write(make_selection_block(tmp_path, 4, 0.2))
    assert record["selection"]["top"] == {"documents": 7, "tokens": 9000, "rows": 30}
    assert record["progress"]["blocks_done"] == [4]
    assert not record["progress"]["next"]["stop"]
    assert "selection experiment's" in block_report.block_refusal(results, 4, selection=False)
    # The replication's report is what it was; the selection block is in its own.
    assert [r["block"] for r in block_report.load_records(results)] == [1, 2, 3]
    assert block_report.primaries(block_report.load_records(results)) == before
    doc = tmp_path / "SELECTION.md"
    doc.write_text(f"a\n{selection_report.BEGIN}\nold\n{selection_report.END}\nb\n")
    summary = selection_report.write_report(results, doc)
    assert summary["blocks"] == [4]
    rows = {(c["arm"], c["against"]): c for c in summary["comparisons"]}
    top = rows[("top-uniform", "control-uniform")]["acc_far"]
    pairs = record["pairs"]
    diff = np.asarray(pairs["top-uniform"]["acc_far"]["arm"][0]) - pairs["control-uniform"][
        "acc_far"
    ]["arm"][0]
    assert top["value"] == pytest.approx(diff.mean()) and top["ci"][0] > 0.05
    weighting = rows[("control-dense", "control-uniform")]["acc_far"]
    assert weighting["ci"][0] < 0 < weighting["ci"][1]  # no gain was put there
    text = doc.read_text()
    assert text.startswith("a\n") and text.endswith("b\n") and "old" not in text
    assert "| top-uniform − control-uniform | selection, uniform loss |" in text
    assert "| 4 | 7, 9,000 / 7, 9,000 |" in text
    assert (results / "quality_selection.json").is_file()


def test_selection_arms_refuse_to_train_without_the_selection(tmp_path, monkeypatch):
    p = replace(BLOCK_PROFILES["block"], selection_arms=True)
    ctx = BlockContext(p, tmp_path, 1, Runner(tmp_path, ["cpu"], 1), "cpu", tmp_path,
                       tmp_path / "calibration.json", tmp_path / "results")
    monkeypatch.setattr(block_stages, "scorer_server", lambda *a: contextlib.nullcontext("url"))
    with pytest.raises(PipelineError, match="select stage"):
        block_stages.extend(ctx)


# A stand-in for `tokenweight eval` in a real subprocess: items at 64..255 tokens whose mean
# credit falls with the setting's first number, or the pilot's error for 4 kv pairs.
FAKE_EVAL = """
import json, os, sys
out, task, *setting = sys.argv[1:]
n = int(setting[1]) if setting else 0
if setting[:2] == ["--kv-pairs", "4"]:
    sys.exit("tokenweight eval: error: could not draw 3 distractors as long as the answer ' 4096'")
right = round(20 / (1 + n / 8))
items = [{"task": task, "distance": 64 + i, "credit": float(i < right)} for i in range(20)]
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump({"items": {"retrieval": items}}, open(out, "w"))
"""


def test_calibration_records_a_failing_setting_and_sweeps_on(tmp_path, monkeypatch):
    ctx = make_block(tmp_path, 1, 0.0)  # the pilot: only its paths are read
    model = ctx.path("pilot", "uniform", "model")
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(
        block_stages,
        "eval_argv",
        lambda ctx, model, out, seed, tasks, **kw: [
            sys.executable,
            "-c",
            FAKE_EVAL,
            str(out),
            *tasks,
        ],
    )
    calibrate.run(ctx, model)
    tasks = json.loads(ctx.calibration.read_text())["tasks"]
    kv = {s["flags"]["--kv-pairs"]: s for s in tasks["kv"]["sweep"]}
    assert kv[4]["failed"].endswith("could not draw 3 distractors as long as the answer ' 4096'")
    assert kv[2]["accuracy"] == pytest.approx(16 / 20)  # round(20 / 1.25)
    assert tasks["kv"]["flags"] == {"--kv-pairs": 2, "--kv-shared": 0} and tasks["kv"]["in_range"]
    # passkey: no decoys 1.0 (above), 4 decoys 13/20 = 0.65 (inside): the sweep went on.
    assert tasks["passkey"]["flags"] == {"--passkey-distractors": 4, "--passkey-differ": 5}
    assert tasks["idrecall"]["accuracy"] == 1.0 and not tasks["idrecall"]["in_range"]
    assert calibrate.eval_flags(ctx) == [
        "--passkey-distractors", "4", "--passkey-differ", "5", "--kv-pairs", "2", "--kv-shared", "0"
    ]  # fmt: skip


def test_calibration_refuses_a_knob_whose_every_setting_failed():
    sweep = [{"flags": {"--n": n}, "failed": "boom"} for n in (1, 2)]
    with pytest.raises(PipelineError, match="every calibration setting failed"):
        calibrate.pick(sweep, (0.3, 0.85))


def test_later_calls_use_the_carried_tokenizer_and_never_retrain_it(tmp_path):
    """pilot-b, pilot-c and blocks (makes_carried False) stop where pilot-a's models are missing
    or were made from another corpus; nothing is started (no command is logged)."""

    ctx = make_block(tmp_path, 1, 0.0)
    manifest = ctx.path("corpus", "manifest.json")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"list_hash": "abc"}))
    with pytest.raises(PipelineError, match="provenance.json: the carried"):
        block_stages.corpus(ctx)
    with pytest.raises(PipelineError, match="never retrains"):
        block_stages.tokenizer(ctx)
    # pilot-a may train it, but not over carried models that name their corpus.
    (tmp_path / "provenance.json").write_text(json.dumps({"corpus_list_hash": "def"}))
    ctx.makes_carried = True
    with pytest.raises(PipelineError, match="never retrains"):
        block_stages.tokenizer(ctx)
    with pytest.raises(PipelineError, match=r"list_hash abc\) is not the one"):
        block_stages.corpus(ctx)
    assert not (tmp_path / "commands.jsonl").exists()


def test_estimate_from_measured_rates_and_the_pilot_split():
    from bench.quality import block_estimate as be

    p = BLOCK_PROFILES["block"]
    measured = be.Speeds()
    stages = {(s.call, s.name): s.seconds for s in be.stages(p, measured)}
    tokens = p.pretrain_steps * p.pretrain.batch * p.short_len
    # The pilot's base is a block's: same tokens at the measured 930k tokens/s, plus a job.
    assert stages["pilot-b", "pilot-pretrain"] == stages["block-a", "pretrain"]
    assert stages["block-a", "pretrain"] == pytest.approx(tokens / 930_000 + be.JOB_S["train"])
    calls = be.call_minutes(p, measured)
    assert calls["pilot-b"] + calls["pilot-c"] > 9.5  # hence two calls
    assert all(m < 9.5 for m in calls.values())  # each fits a device call with room to spare
    # One TFLOP/s for all: a training stage's rate is that over its FLOPs per token.
    flat = be.Speeds(tflops=100.0)
    per_token = 3 * forward(p.trainee, p.vocab_size, p.short_len) / p.short_len
    assert flat.train_rate(p, "pretrain") * per_token == pytest.approx(100e12)
    assert be.parse_rates(["extend=500000"]) == {"pretrain": 930_000.0, "extend": 500_000.0}
    with pytest.raises(ValueError, match="STAGE=TOKENS_PER_S"):
        be.parse_rates(["judge=1"])
    # A record's TFLOP/s back to tokens/s: the pilot's 930k tokens/s at 512, as a record has it.
    record = {"progress": {"training_tflops": {"pretrain": 930_000 * per_token / 1e12}}}
    rates = be.record_rates(p, record)
    assert rates["pretrain"] == pytest.approx(930_000) and rates["extend"] == 726_000
    # The arms, evals and diagnostics go by a record's measured stage times, as they are: the
    # evals in waves of jobs_per_device, block-b and block-c each its own call.
    record["progress"]["stage_seconds"] = {"extend": 100.0, "eval": 300.0, "diagnose": 20.0}
    timed = be.Speeds(rates, None, be.record_stage_seconds(p, record))
    calls = be.call_minutes(p, timed)
    assert calls["block-b"] == pytest.approx(100 / 60)
    assert calls["block-c"] == pytest.approx((300 + 20) / 60)
    assert be.record_stage_seconds(p, {"progress": {}}) == be.MEASURED_STAGE_S
