"""A small experiment tree built by hand (the seed project's sandbox.py, on mlprune).

    python examples/sandbox.py          # then: mlflow ui, or mlprune tree -e sandbox

One initialization is the root; two pruning methods branch off the same trained
network; each pruned network is rewound to the root and retrained (a lottery
ticket), and a random-reinit control sits beside the L1 ticket.
"""

from mlprune import Experiment, Recipe

exp = Experiment("sandbox")
root = exp.init(model="lenet", dataset="digits", seed=0)
trained = root.apply(Recipe.train(epochs=5, lr=0.01, momentum=0.9))

retrain = Recipe.train(epochs=5, lr=0.01, momentum=0.9)
for method, options in [("l1_unstructured", {}), ("ln_structured", {"n": 1, "dim": 1})]:
    pruned = trained.apply(Recipe.prune(method=method, amount=0.5, **options))
    ticket = pruned.apply(Recipe.reinit(strategy="rewind", to="root") + retrain)
    print(
        f"{method:>16}: pruned acc {pruned.metrics['test_accuracy']:.3f}, "
        f"ticket acc {ticket.metrics['test_accuracy']:.3f}, sparsity {ticket.metrics['sparsity']:.2f}"
    )
    if method == "l1_unstructured":
        control = pruned.apply(Recipe.reinit(strategy="random") + retrain)
        print(f"{'random reinit':>16}: acc {control.metrics['test_accuracy']:.3f}")

print(f"trained (dense): acc {trained.metrics['test_accuracy']:.3f}; run `mlprune tree -e sandbox` to see the tree")
