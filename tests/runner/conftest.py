import pytest

from imagenet_data import make_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic ImageNet set (:func:`imagenet_data.make_data`)."""
    return make_data(tmp_path_factory.mktemp("runner"))
