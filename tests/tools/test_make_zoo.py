"""tools/make_zoo.py without exporting anything: the zoo's packing recipes and the YOLO-style detector."""
import shlex

import pytest
from script_loader import load


def _tool():
    return load("make_zoo", register=True)    # its dataclasses look their module up there


def test_pack_args_on_the_command_line_give_the_recorded_recipe():
    from int8batch.cli.main import build_parser
    from int8batch.cli.options import preprocess_overrides
    from int8batch.packing.packer import resolve_config

    tool = _tool()
    assert len({s.name for s in tool.ZOO}) == len(tool.ZOO) == 10
    for spec in tool.ZOO:
        cfg, pack_args = tool.recipe(spec)
        assert tuple(cfg.chw) == (3, spec.size, spec.size), spec.name
        args = build_parser().parse_args(["pack", "SRC", "OUT", *shlex.split(pack_args)])
        assert resolve_config(args.preset, None, **preprocess_overrides(args)) == cfg, spec.name


def test_list_names_every_model(capsys):
    tool = _tool()
    assert tool.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [s.name for s in tool.ZOO]


def test_yolo_csp_has_three_heads_at_strides_8_16_32():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _tool().yolo_csp(torch).eval()
    assert 2.5e6 < sum(p.numel() for p in net.parameters()) < 4e6
    with torch.no_grad():
        outs = net(torch.zeros(2, 3, 128, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 144, 16, 16), (2, 144, 8, 8), (2, 144, 4, 4)]
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"SiLU", "MaxPool2d", "Upsample", "BatchNorm2d"} <= kinds
