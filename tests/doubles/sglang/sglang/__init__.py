"""Test double for SGLang (sgl-project/sglang); see sglang.launch_server."""
