from squeezer.cli.output import speed_line

MEASURED = {"speedup": 1.0, "verdict": "no difference", "low": 0.97, "high": 1.04}
TARGET = {"runtime": "onnxruntime-cpu", "threads": 1, "batch": 1, "speedup": None, "latency_ms": None}


def test_the_speed_line_says_within_noise_and_whether_the_goal_was_met():
    plain = speed_line({"target": TARGET, "on_target": MEASURED, "goal_met": None})
    assert plain == "model.onnx speed-up ×1.00 on onnxruntime-cpu, 1 thread, batch 1 (within noise; interval 0.97-1.04)"
    goal = speed_line({"target": TARGET | {"speedup": 3.0, "threads": 4}, "on_target": MEASURED, "goal_met": False})
    assert "4 threads" in goal and goal.endswith("goal ×3.0 missed")
    faster = MEASURED | {"speedup": 2.5, "verdict": "faster"}
    met = speed_line({"target": TARGET | {"latency_ms": 2.0}, "on_target": faster, "goal_met": True})
    assert "×2.50" in met and "(faster;" in met and met.endswith("goal 2.0 ms met")
