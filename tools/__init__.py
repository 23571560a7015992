"""Development tooling of this repository, never shipped in the wheel (``pyproject.toml`` packages only
``include/backups``): the local Airflow launcher (:mod:`tools.airflow_local`, ``make airflow`` and the browser
tests), the Airflow demo (:mod:`tools.demo_airflow`, ``make demo`` / ``make demo-remote``) and the
``airflow_settings.yaml`` loader (:mod:`tools.airflow_settings`, ``make airflow-settings``).

Run from the repository root (``python -m tools.<module>``); they import the library (``backups``), the library
never imports them. (``cron-descriptor`` installs a namespace package also called ``tools``; this regular package
takes precedence wherever it is on ``sys.path``.)
"""
