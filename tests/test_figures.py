import matplotlib.colors as mcolors
import torch

from mlp_lab.figures import plot_confusion, plot_curves, plot_predictions


def test_prediction_grid_titles_and_marks_wrong_predictions():
    images = torch.rand(3, 784)
    names = ["T-shirt/top", "Trouser", "Pullover"]
    fig = plot_predictions(images, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2]), names, n=3)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert [t.get_text() for t in titles] == [
        "true: T-shirt/top\npred: T-shirt/top",
        "true: Trouser\npred: Pullover ✗",
        "true: Pullover\npred: Pullover",
    ]
    assert [mcolors.to_hex(t.get_color()) for t in titles] == ["#000000", "#ff0000", "#000000"]


def test_confusion_figure_prints_every_count():
    matrix = torch.tensor([[5, 1], [0, 7]])
    fig = plot_confusion(matrix, ["a", "b"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1", "5", "7"]


def test_curves_plot_train_and_val_per_epoch():
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "train_acc": e / 10, "val_acc": e / 20}
        for e in (1, 2, 3)
    ]
    ax_loss, ax_acc = plot_curves(history).axes
    assert [list(line.get_ydata()) for line in ax_loss.lines] == [[1, 0.5, 1 / 3], [2, 1, 2 / 3]]
    assert [list(line.get_ydata()) for line in ax_acc.lines] == [[0.1, 0.2, 0.3], [0.05, 0.1, 0.15]]
    assert [line.get_label() for line in ax_acc.lines] == ["train acc", "val acc"]


def test_curves_of_a_two_epoch_run_tick_whole_epochs_only():
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "train_acc": e / 10, "val_acc": e / 20}
        for e in (1, 2)
    ]
    for ax in plot_curves(history).axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == round(t) for t in ticks), ticks  # no epoch 1.2, 1.4, ...
