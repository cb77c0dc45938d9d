"""QM9, 11 regression targets as in Nash-MTL and FAMO (Ramakrishnan et al., 2014).

The multi-task QM9 of Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al.,
NeurIPS 2023), which take PyTorch Geometric's QM9: 130,831 molecules (the
133,885 of GDB-9 minus the 3,054 that failed the consistency check listed in
``uncharacterized.txt``) and the 11 targets

  mu, alpha, homo, lumo, r2, zpve, U0, U, H, G, cv

where U0, U, H, G are the *atomization* energies (PyG columns 12-15), in
PyG's units: homo, lumo, zpve in eV (Hartree x 27.211386246), U0, U, H, G in
eV (kcal/mol x 0.04336414), mu in D, alpha in a0^3, r2 in a0^2, cv in
cal/(mol K). Nash-MTL reports the MAE of ``MEV_TASKS`` in meV (x 1000) and
trains on targets standardised with the train split's mean and std (compute
them from ``load_split(..., 'train')``; they are not applied here). Splits as
in Nash-MTL: a random permutation (``split_seed``), the first ``num_test``
molecules are ``test``, the next ``num_validation`` ``validation``, the rest
``train`` (110,831 by default). The exact permutation of the papers (torch's
RNG) cannot be reproduced, so results match in distribution, not molecule by
molecule.

Raw files (parsed without rdkit), from the MoleculeNet/PyG release
(https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/molnet_publish/qm9.zip
and https://ndownloader.figshare.com/files/3195404 for uncharacterized.txt)::

  <manual_dir>/gdb9.sdf             V2000 molfile blocks separated by $$$$
  <manual_dir>/gdb9.sdf.csv         mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,
                                    u298,h298,g298,cv,u0_atom,u298_atom,h298_atom,g298_atom
  <manual_dir>/uncharacterized.txt  optional; its molecules are dropped (PyG's rule:
                                    lines 10 to -3, first column, 1-based)

Molecules become padded arrays of ``max_atoms`` = 29 atoms (hydrogens
included, as in PyG), batch keys:

  features        float32 [29, 11]  per atom: one-hot H,C,N,O,F (5), atomic number,
                                    number of bonded H, number of bonds, x, y, z (Angstrom);
                                    padding rows are 0
  atomic_numbers  int32 [29]        0 = padding
  positions       float32 [29, 3]   Angstrom
  bonds           int8 [29, 29]     bond order from the sdf (1, 2, 3; 4 aromatic), 0 = none
  num_atoms       int32
  targets         float32 [11]      the 11 targets, order of ``TARGETS``
  <target>        float32 [1]       one regression task each (mu, alpha, ..., cv)
  index           int32             0-based position of the molecule in gdb9.sdf
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from mtlx.data import base
from mtlx.data.specs import DatasetInfo, regression_task

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
MEV_TASKS = ("homo", "lumo", "zpve", "U0", "U", "H", "G")
HAR2EV = 27.211386246
KCALMOL2EV = 0.04336414
# (csv column, factor) for each of TARGETS.
CSV_COLUMNS = (("mu", 1.0), ("alpha", 1.0), ("homo", HAR2EV), ("lumo", HAR2EV),
               ("r2", 1.0), ("zpve", HAR2EV), ("u0_atom", KCALMOL2EV),
               ("u298_atom", KCALMOL2EV), ("h298_atom", KCALMOL2EV),
               ("g298_atom", KCALMOL2EV), ("cv", 1.0))
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
ONE_HOT = (1, 6, 7, 8, 9)
NUM_FEATURES = 11
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class QM9Config(tfds.core.BuilderConfig):
  num_test: int = 10000
  num_validation: int = 10000
  split_seed: int = 0
  max_atoms: int = 29


def parse_sdf(text: str):
  """Yield (title, atomic numbers [n], positions [n, 3], bonds [(i, j, order)]) per block."""
  for block in text.split("$$$$"):
    lines = block.strip("\n").splitlines()
    if len(lines) < 4:
      continue
    title, counts = lines[0].strip(), lines[3]
    num_atoms, num_bonds = int(counts[0:3]), int(counts[3:6])
    atoms, positions = [], []
    for line in lines[4:4 + num_atoms]:
      positions.append([float(line[0:10]), float(line[10:20]), float(line[20:30])])
      symbol = line[31:34].strip()
      if symbol not in ELEMENTS:
        raise ValueError(f"qm9: molecule {title!r} has element {symbol!r}; expected one of "
                         f"{sorted(ELEMENTS)}.")
      atoms.append(ELEMENTS[symbol])
    bonds = []
    for line in lines[4 + num_atoms:4 + num_atoms + num_bonds]:
      bonds.append((int(line[0:3]) - 1, int(line[3:6]) - 1, int(line[6:9])))
    yield title, np.asarray(atoms, np.int32), np.asarray(positions, np.float64), bonds


def read_targets(path) -> tuple[list[str], np.ndarray]:
  """gdb9.sdf.csv -> (mol ids, [N, 11] targets in the units above)."""
  with open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  if not lines:
    raise ValueError(f"qm9: {path} is empty; expected a header line and one row per "
                     "molecule.")
  header = [h.strip() for h in lines[0].split(",")]
  missing = [c for c, _ in CSV_COLUMNS if c not in header]
  if missing:
    raise ValueError(f"qm9: {path} lacks columns {missing}; header is {header}.")
  cols = [header.index(c) for c, _ in CSV_COLUMNS]
  factors = np.asarray([f for _, f in CSV_COLUMNS])
  ids, values = [], []
  for n, line in enumerate(lines[1:], start=2):
    parts = line.split(",")
    try:
      row = [float(parts[c]) for c in cols]
    except (ValueError, IndexError):
      raise ValueError(f"qm9: {path} line {n} is not a row of {len(header)} numbers: "
                       f"{line[:80]!r}.") from None
    if not all(np.isfinite(row)):
      raise ValueError(f"qm9: {path} line {n} has a NaN/inf target; expected finite values.")
    ids.append(parts[0].strip())
    values.append(row)
  if not ids:
    raise ValueError(f"qm9: {path} has a header but no rows; expected one row per molecule.")
  return ids, np.asarray(values, np.float64) * factors


def read_uncharacterized(path) -> set[int]:
  """0-based indices of the molecules to drop (PyG: lines [9:-2], first token, 1-based)."""
  with open(path) as f:
    lines = f.read().split("\n")
  rows = [line.split() for line in lines[9:-2]]
  return {int(r[0]) - 1 for r in rows if r and r[0].isdigit()}


def molecule_arrays(atoms, positions, bonds, max_atoms):
  n = len(atoms)
  z = np.zeros(max_atoms, np.int32)
  z[:n] = atoms
  pos = np.zeros((max_atoms, 3), np.float32)
  pos[:n] = positions
  adj = np.zeros((max_atoms, max_atoms), np.int8)
  for i, j, order in bonds:
    adj[i, j] = adj[j, i] = order
  feats = np.zeros((max_atoms, NUM_FEATURES), np.float32)
  for k, element in enumerate(ONE_HOT):
    feats[:n, k] = atoms == element
  feats[:n, 5] = atoms
  bonded = adj[:n, :n] > 0
  feats[:n, 6] = (bonded & (atoms[None, :] == 1)).sum(1)
  feats[:n, 7] = bonded.sum(1)
  feats[:n, 8:11] = positions
  return {"features": feats, "atomic_numbers": z, "positions": pos, "bonds": adj,
          "num_atoms": np.int32(n)}


class QM9(base.MtlxBuilder, skip_registration=True):
  """QM9 with the 11 targets of Nash-MTL/FAMO, molecules as padded atom arrays."""

  name = "mtlx_qm9"
  MTLX_NAME = "qm9"
  CONFIG_CLASS = QM9Config
  BUILDER_CONFIGS = [QM9Config(name="default")]
  REQUIRES_MANUAL_DIR = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download qm9.zip from MoleculeNet
  (https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/molnet_publish/qm9.zip, the raw
  files PyTorch Geometric uses) and uncharacterized.txt
  (https://ndownloader.figshare.com/files/3195404) so that manual_dir contains gdb9.sdf,
  gdb9.sdf.csv and uncharacterized.txt.
  """

  @classmethod
  def validate_config(cls, config):
    base.require_at_least(config, 1, "num_test", "num_validation", "max_atoms")

  @classmethod
  def mtlx_info(cls, config) -> DatasetInfo:
    return DatasetInfo(name=cls.MTLX_NAME, input_key="features",
                       input_shape=(config.max_atoms, NUM_FEATURES),
                       tasks=tuple(regression_task(t, 1) for t in TARGETS), splits=SPLITS)

  @classmethod
  def feature_spec(cls, config):
    m = config.max_atoms
    return {"features": base.float_tensor((m, NUM_FEATURES)),
            "atomic_numbers": base.int_tensor((m,)),
            "positions": base.float_tensor((m, 3)),
            "bonds": base.int_tensor((m, m), np.int8),
            "num_atoms": tfds.features.Scalar(dtype=np.int32),
            "targets": base.float_tensor((len(TARGETS),)),
            "index": tfds.features.Scalar(dtype=np.int32)}

  @classmethod
  def postprocess(cls, config, batch):
    for key in ("atomic_numbers", "num_atoms", "index"):
      batch[key] = batch[key].astype(np.int32)
    return base.split_columns(batch, "targets", TARGETS, keepdims=True)

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = self.manual_path(dl_manager, "gdb9.sdf", "gdb9.sdf.csv")
    ids, targets = read_targets(os.path.join(root, "gdb9.sdf.csv"))
    skip_path = os.path.join(root, "uncharacterized.txt")
    skip = read_uncharacterized(skip_path) if os.path.exists(skip_path) else set()
    sdf_path = os.path.join(root, "gdb9.sdf")
    with open(sdf_path) as f:
      try:
        molecules = list(parse_sdf(f.read()))
      except (ValueError, IndexError) as e:
        raise ValueError(f"qm9: cannot parse {sdf_path}: {e}") from None
    if not molecules:
      raise ValueError(f"qm9: {sdf_path} holds no molecules; expected V2000 molfile "
                       "blocks separated by $$$$.")
    if len(molecules) != len(ids):
      raise ValueError(f"qm9: gdb9.sdf has {len(molecules)} molecules but gdb9.sdf.csv has "
                       f"{len(ids)} rows; expected the same (row i = molecule i).")
    keep = np.asarray([i for i in range(len(ids)) if i not in skip])
    need = config.num_test + config.num_validation + 1
    if len(keep) < need:
      raise ValueError(f"qm9: {len(keep)} molecules; expected at least num_test + "
                       f"num_validation + 1 = {need} (set builder_kwargs num_test=, "
                       "num_validation=).")
    order = keep[np.random.default_rng(config.split_seed).permutation(len(keep))]
    parts = {"test": order[:config.num_test],
             "validation": order[config.num_test:config.num_test + config.num_validation],
             "train": order[config.num_test + config.num_validation:]}
    return {s: self._generate_examples(molecules, ids, targets, np.sort(idx))
            for s, idx in parts.items()}

  def _generate_examples(self, molecules, ids, targets, indices):
    max_atoms = self.builder_config.max_atoms
    for i in indices:
      title, atoms, positions, bonds = molecules[i]
      if title.startswith("gdb_") and ids[i].startswith("gdb_") and title != ids[i]:
        raise ValueError(f"qm9: molecule {i} of gdb9.sdf is {title!r} but row {i} of "
                         f"gdb9.sdf.csv is {ids[i]!r}.")
      if len(atoms) > max_atoms:
        raise ValueError(f"qm9: molecule {title!r} has {len(atoms)} atoms; expected at most "
                         f"max_atoms={max_atoms}.")
      example = molecule_arrays(atoms, positions, bonds, max_atoms)
      example["targets"] = targets[i].astype(np.float32)
      example["index"] = int(i)
      yield int(i), example
