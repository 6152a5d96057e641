"""Old names of the local database, kept only for `kiosk/sync.py` and its tests while
they move to `kiosk.localdb` (the word "store" is the shop's). Delete once unused."""

from kiosk.localdb import DB_FILE, DBError, KioskDB, Recorded

KioskStore = KioskDB
StoreError = DBError

__all__ = ["DB_FILE", "KioskStore", "Recorded", "StoreError"]
