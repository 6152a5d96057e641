"""Tools for tests, benchmarks and the demo; never installed, never imported by a shop.

- `corpus`: synthetic camera-like QR frames, rendered deterministically from a seed.
- `replay`: writes a recorded door session (image directory or video) for `--camera`.
- `devbroker`: a throwaway Mosquitto from the repository's `broker_config/`.

They live at the repository root, outside `o2o_protocol`, `kiosk` and `cloud_bridge`, so
`pip install .[kiosk]` or `.[bridge]` ships only what runs in a shop or a server. pytest,
`python -m bench` and `scripts/demo.py` find them on the repository root.
"""
