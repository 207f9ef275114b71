"""Device-side statistics: per-call densities stay tensors until read, calls added without a step
are stamped by the next ``begin``, cost-model dense calls are counted, and the density feedback
reaches the host without a sync (CPU here; the GPU test runs under sync-debug mode)."""

from __future__ import annotations

import pytest
import torch

from xattn_video.stats import DensityFeedback, XAttentionStats, mask_density, mask_density_tensor


def _mask(seed=0, B=2, H=3, nb=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, H, nb, nb, generator=g) < 0.4


def test_mask_density_tensor_matches_host_version_and_definition():
    mask = _mask()
    kv_len = torch.tensor([80, 33])
    heads = mask_density_tensor(mask, 16, kv_len, 80)
    valid = torch.arange(5)[None, :] * 16 < kv_len[:, None]  # (B, Nbk)
    # selected pairs (as the op counts them) over the pairs with a valid key block
    want = [float(mask[:, h].sum()) / float(valid.sum() * 5) for h in range(3)]
    assert heads.dtype == torch.float64 and heads.tolist() == want
    density, host_heads = mask_density(mask, 16, kv_len, 80)
    assert host_heads == want and density == sum(want) / 3


def test_add_and_begin_stamp_calls_and_read_once():
    st = XAttentionStats()
    st.begin(run=0, step=0, branch="cond")
    st.add(0)  # dense, schedule
    st.add(1, dense_reason="cost")
    st.begin(run=0, step=1, branch="cond")
    h0, h1 = torch.tensor([0.5, 0.25]), torch.tensor([1.0, 0.5])
    st.add(0, heads=h0)
    st.add(1, heads=h1, reused=True)
    assert st._lazy == [] and len(st._open) == 2  # nothing read yet
    assert len(st) == 4  # the calls not stamped yet count too
    recs = st.records  # stamps the open calls with (0, 1, "cond") and reads them
    assert [(r.run, r.step, r.layer, r.branch, r.sparse, r.dense_reason) for r in recs] == [
        (0, 0, 0, "cond", False, "schedule"),
        (0, 0, 1, "cond", False, "cost"),
        (0, 1, 0, "cond", True, None),
        (0, 1, 1, "cond", True, None),
    ]
    assert recs[2].heads == [0.5, 0.25] and recs[2].density == 0.375
    assert recs[3].reused and recs[3].density == 0.75
    s = st.summary()
    assert s["num_cost_dense_calls"] == 1 and s["num_dense_calls"] == 2
    assert s["sparse_density"] == (0.375 + 0.75) / 2
    assert s["per_head"] == [0.75, 0.375]
    assert s["per_step"][0]["num_cost_dense_calls"] == 1


def test_record_with_tensor_heads_is_lazy():
    st = XAttentionStats()
    st.record(run=0, step=2, layer=3, branch="pass0", density=None, sparse=True,
              heads=torch.tensor([0.2, 0.4], dtype=torch.float64))  # fmt: skip
    assert len(st._lazy) == 1
    (rec,) = st.records
    assert rec.heads == [0.2, 0.4] and abs(rec.density - 0.3) < 1e-12 and not st._lazy


@pytest.mark.parametrize("as_tensor", [False, True])
def test_record_density_is_the_heads_mean_unless_given(as_tensor):
    """The default was 1.0, so a sparse call recorded with heads [0.2, 0.4] and no density
    counted as density 1.0; and tensor heads overwrote a density that was given."""
    st = XAttentionStats()

    def heads():
        return torch.tensor([0.2, 0.4], dtype=torch.float64) if as_tensor else [0.2, 0.4]

    st.record(run=0, step=0, layer=0, branch="c", sparse=True, heads=heads())
    st.record(run=0, step=0, layer=1, branch="c", sparse=True, density=0.5, heads=heads())
    st.record(run=0, step=0, layer=2, branch="c")  # dense, nothing given: 1.0
    assert [round(r.density, 12) for r in st.records] == [0.3, 0.5, 1.0]
    assert [r.heads for r in st.records] == [[0.2, 0.4], [0.2, 0.4], None]
    # a dense call recorded without a reason is the schedule's, not the cost model's
    assert st.records[2].dense_reason == "schedule"
    assert st.summary()["num_cost_dense_calls"] == 0


def test_density_of_one_branch_and_of_all():
    st = XAttentionStats()
    st.record(run=0, step=0, layer=0, branch="cond", heads=[0.2, 0.2], sparse=True)
    st.record(run=0, step=0, layer=0, branch="uncond", heads=[0.6, 0.6], sparse=True)
    assert st.density(0, 0, "cond") == pytest.approx(0.2)
    assert st.density(0, 0, "uncond") == pytest.approx(0.6)
    assert st.density(0, 0) == pytest.approx(0.4)
    assert st.density(1, 0) is None and st.density(0, 0, "pass0") is None


def test_reset_drops_the_records_and_the_density_feedback():
    """auto_dense decides from the feedback: after a reset it must not see the old densities."""
    st = XAttentionStats()
    st.begin(run=0, step=0, branch="cond")
    st.add(0, heads=torch.tensor([0.25, 0.75]))
    st.begin(run=0, step=1, branch="cond")  # publishes the feedback
    assert st.feedback.get(0) == 0.5 and len(st) == 1
    st.reset()
    assert st.feedback.get(0) is None and len(st) == 0 and st.records == []


def test_disabled_stats_record_nothing_but_feed_back():
    st = XAttentionStats(enabled=False)
    st.begin(run=0, step=0, branch="pass0")
    st.add(4, heads=torch.tensor([0.25, 0.75]))
    st.begin(run=0, step=1, branch="pass0")
    assert len(st) == 0
    assert st.feedback.get(4) == 0.5


def test_feedback_publishes_the_latest_value_per_layer():
    fb = DensityFeedback()
    assert fb.get(0) is None
    fb.update(0, torch.tensor([0.1, 0.3], dtype=torch.float64))
    fb.update(0, torch.tensor([0.5, 0.25], dtype=torch.float64))
    fb.publish()
    assert fb.get(0) == 0.375 and fb.get(1) is None
    fb.clear()
    assert fb.get(0) is None


def test_a_cuda_copy_lands_at_the_next_publish_however_late_the_gpu_is(monkeypatch):
    """The feedback asked the copy's CUDA event whether it was done: a GPU running behind gave
    no value at one forward and a value at the next, so auto_dense decided at different steps
    in different runs of the same inputs. A copy now lands at the next publish, waited for.
    (A CPU stand-in for the CUDA copy: its event is never done when asked.)"""
    waited = []

    class LateEvent:
        def query(self):
            return False

        def synchronize(self):
            waited.append(True)

    fb = DensityFeedback()
    monkeypatch.setattr(fb, "_start_copy", lambda vals: (vals.clone(), LateEvent()))
    fb.update(0, torch.tensor([0.25, 0.75], dtype=torch.float64))
    fb.publish()
    assert fb.get(0) is None and waited == []  # in flight: not waited for within the forward
    fb.update(0, torch.tensor([0.1, 0.1], dtype=torch.float64))
    fb.publish()  # the next forward: the first copy lands, the second starts
    assert fb.get(0) == 0.5 and waited == [True]
    fb.publish()
    assert fb.get(0) == pytest.approx(0.1) and waited == [True, True]
