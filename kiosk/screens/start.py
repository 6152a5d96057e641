"""The start screen: what a customer sees walking up to the door."""

from __future__ import annotations

from kivy.uix.screenmanager import Screen

from kiosk.screens.base import load_kv

load_kv(__file__)


class StartScreen(Screen):
    """Idle screen; its texts follow `app.language` through the .kv bindings."""
