"""joblib's backend "cw" (issue 28, item 3): Parallel and scikit-learn's
n_jobs=-1 run their batches as cw jobs on real workers."""
import pytest

from cw.launch import query_status

joblib = pytest.importorskip("joblib")


def test_parallel_and_grid_search_run_on_the_cluster(cluster, monkeypatch):
    import cw.joblib  # noqa: F401  (registers the backend)

    port = cluster(2)
    monkeypatch.setenv("CW_PORT", str(port))
    before = query_status("127.0.0.1", port)["counts"]["submitted"]
    with joblib.parallel_config(backend="cw"):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(200)) == \
            [i * i for i in range(200)]
        assert joblib.Parallel(n_jobs=-1)._effective_n_jobs() == 2  # the cluster's executors
    ran = query_status("127.0.0.1", port)["counts"]["submitted"] - before
    assert 1 <= ran <= 200  # as cw jobs, batched by joblib
    with joblib.parallel_config(backend="cw"), pytest.raises(ZeroDivisionError):
        joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(1, i) for i in (1, 0, 2))
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    x, y = load_iris(return_X_y=True)
    before = query_status("127.0.0.1", port)["counts"]["submitted"]
    with joblib.parallel_config(backend="cw"):
        search = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}, cv=3, n_jobs=-1).fit(x, y)
    assert search.best_score_ > 0.9 and sklearn.__version__
    assert query_status("127.0.0.1", port)["counts"]["submitted"] > before  # the folds ran on cw
