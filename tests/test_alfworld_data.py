"""Tests of envs/alfworld.py's data checks: malformed official ALFWorld data and unusable games roots fail at
envs.make with one line naming the file and the problem. Only the task-list code runs, so no engine is needed
(tests/test_alfworld.py plays the games).
"""

import json

import pytest

import envs
from envs import alfworld as A

GRAMMAR = '{"intro": [{"rhs": "-= Welcome =-#look.feedback#\\n\\nYour task is to: put a mug in cabinet."}]}'


def trial(data, name="pick_and_place_simple-Mug-None-Cabinet-1", split="valid_seen", game=None, traj=None):
    """One trial folder in alfworld-download's layout; game / traj: the objects (or raw text) of its two files."""
    d = data / "json_2.1.1" / split / name / "trial_T1"
    d.mkdir(parents=True)
    game = {"grammar": GRAMMAR, "solvable": True, "pddl_problem": "(define)"} if game is None else game
    traj = {"task_type": "pick_and_place_simple"} if traj is None else traj
    for f, obj in (("game.tw-pddl", game), ("traj_data.json", traj)):
        (d / f).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return d


def test_well_formed_trial_lists_its_task(tmp_path):
    """The control: a well-formed trial gives one task with traj_data.json's type and the grammar's task text; an
    unsolvable one is skipped."""
    d = trial(tmp_path)
    trial(tmp_path, name="pick_and_place_simple-Mug-None-Cabinet-2", game={"grammar": GRAMMAR, "solvable": False})
    tasks = envs.make("alfworld", "eval_seen", data=str(tmp_path)).tasks
    assert [(t.gamefile, t.task_type, t.text) for t in tasks] == [
        (str(d / "game.tw-pddl"), "pick_and_place_simple", "put a mug in cabinet.")]


@pytest.mark.parametrize("game,traj,file,message", [
    ('{"grammar": "x", "solv', None, "game.tw-pddl", r"not valid JSON \(Unterminated string .*\); expected a TextWorld game"),
    ("", None, "game.tw-pddl", r"not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\)"),
    ([GRAMMAR], None, "game.tw-pddl", r"expected a TextWorld game object with 'grammar', found a JSON list"),
    ({"solvable": True}, None, "game.tw-pddl", r"found an object without 'grammar'"),
    ({"grammar": ["x"], "solvable": True}, None, "game.tw-pddl", r"expected 'grammar' to be a string, found a JSON list"),
    (None, '{"task_type": ', "traj_data.json", r"not valid JSON \(.*\); expected ALFRED's trajectory object"),
    (None, {"scene": {}}, "traj_data.json", r"expected ALFRED's trajectory object with 'task_type', found an object without"),
    (None, {"task_type": "make_coffee"}, "traj_data.json", r"expected 'task_type' to be one of ALFWorld's six, found 'make_coffee'"),
])
def test_malformed_game_files_name_the_file(tmp_path, game, traj, file, message):
    """Truncated or empty JSON, a wrong top-level type, a missing or wrong field: a ValueError at make() naming the
    trial's file and the problem, on one line."""
    d = trial(tmp_path, game=game, traj=traj)
    with pytest.raises(ValueError, match=message) as e:
        envs.make("alfworld", "eval_seen", data=str(tmp_path))
    assert str(e.value).startswith(str(d / file) + ": ") and "\n" not in str(e.value)


def test_data_and_games_paths_that_cannot_work(tmp_path):
    """A data path that is a file, a missing file in a trial, and a games root that is (or lies under) a file fail
    at make() with one line; a games root that does not exist yet is fine (and is not created by make)."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"file is not a directory; run `alfworld-download`") as e:
        envs.make("alfworld", "train", data=str(tmp_path / "file"))
    assert "\n" not in str(e.value)
    d = trial(tmp_path / "data")
    (d / "traj_data.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"trial_T1 lacks traj_data\.json \(looked for .*traj_data\.json\)"):
        envs.make("alfworld", "eval_seen", data=str(tmp_path / "data"))
    for root in (tmp_path / "file", tmp_path / "file" / "games"):
        with pytest.raises(ValueError, match=rf"{tmp_path / 'file'}: not a directory, so generated ALFWorld games "
                                             rf"cannot be written under {root}$"):
            A.make_tasks("train", 1, data="", games=str(root))
    assert A.make_tasks("train", 0, data="", games=str(tmp_path / "new" / "games")) == []
    assert not (tmp_path / "new").exists()
