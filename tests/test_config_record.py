"""The resolved configuration is recorded at each start: `config_step_<step>.json` in DATA_ROOT
and TensorBoard text + hparams, read back with TensorBoard's own reader; no secret in either."""

from __future__ import annotations

from pathlib import Path

from helpers import finish_run, read_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from vsr_async.settings import secret_keys

TOKEN = "s3cret-token-never-stored"
TEXT_TAG = "Config/Initial_Configuration/text_summary"  # add_text's suffix, as the predecessor's


def tensorboard_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return events


def start_hparams(events: EventAccumulator) -> dict[str, object]:
    """The hparams of the session_start_info record(s), as Python values."""
    found: dict[str, object] = {}
    for content in events.PluginTagToContent("hparams").values():
        data = HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                found[key] = getattr(value, value.WhichOneof("kind"))
    return found


async def test_each_start_records_its_configuration_without_secrets(make_config) -> None:
    first = await finish_run(make_config, MAX_STEPS=4, SAVE_STEP_EVERY=4, WEB_TOKEN=TOKEN)
    run_dir = first.run_dir
    record = read_json(run_dir / "config_step_0000000.json")
    assert record["step"] == 0
    assert record["run_id"] == first.store.run_id
    assert record["timestamp"].endswith("Z")
    assert record["config"] == first.config.public_dict()
    assert record["config"]["N_FEATS"] == 8 and record["config"]["MAX_STEPS"] == 4
    assert not secret_keys() & set(record["config"])

    events = tensorboard_events(run_dir)
    text = events.Tensors(TEXT_TAG)
    assert [e.step for e in text] == [0]
    markdown = text[0].tensor_proto.string_val[0].decode("utf-8")
    assert "| `N_FEATS` | `8` |" in markdown and "WEB_TOKEN" not in markdown
    hparams = start_hparams(events)
    assert hparams["N_FEATS"] == 8 and hparams["DATASET_LAYOUT"] == "patches"
    assert hparams["MAX_LR"] == record["config"]["MAX_LR"]
    assert not secret_keys() & set(hparams)

    second = await finish_run(make_config, MAX_STEPS=6, SAVE_STEP_EVERY=4)  # resumes at 4
    assert second.run_dir == run_dir
    resumed = read_json(run_dir / "config_step_0000004.json")
    assert resumed["step"] == 4 and resumed["config"]["MAX_STEPS"] == 6
    assert resumed["run_id"] == first.store.run_id  # the run goes on
    assert read_json(run_dir / "config_step_0000000.json") == record  # the first one stays
    steps = sorted(e.step for e in tensorboard_events(run_dir).Tensors(TEXT_TAG))
    assert steps == [0, 4]

    for path in run_dir.rglob("*"):  # nothing the run wrote holds the token
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
