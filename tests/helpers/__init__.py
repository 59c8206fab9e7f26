"""Helpers shared by the tests and by tests/cpp's generators: import them as ``helpers.<module>``.

pytest puts ``tests/`` on ``sys.path`` (the rootdir conftest's folder), so test files import
``helpers``; scripts under ``tests/cpp`` add ``tests/`` themselves.
"""
