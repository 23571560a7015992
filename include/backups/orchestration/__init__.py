"""The only package that imports Airflow: DAG builders, thin task adapters, connection → credentials, notifiers."""
