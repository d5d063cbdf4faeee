"""pairseg.paths: the paths the engine gives ITK on Windows with non-ASCII folders (issue 19 item 9).

The Windows branch runs here with ``os_name="nt"`` and a recorded short-name function in place of
``GetShortPathNameW`` (this machine is not Windows); what Windows itself returns is not covered.
"""

import os

import pytest

from pairseg.errors import PairSegInputError
from pairseg.paths import NonAsciiPathError, ascii_work_folder, itk_path


def test_posix_and_ascii_paths_are_given_as_they_are(tmp_path):
    folder = tmp_path / "Données José"
    folder.mkdir()
    assert itk_path(folder / "image.nii.gz") == str(folder / "image.nii.gz")           # POSIX: bytes
    calls = []
    assert itk_path(str(tmp_path / "plain.nrrd"), os_name="nt", short_path=calls.append) == str(tmp_path / "plain.nrrd")
    assert calls == []                                                                 # ASCII: untouched


def test_windows_non_ascii_path_becomes_its_short_form(tmp_path):
    folder = tmp_path / "Données José"
    folder.mkdir()
    image = folder / "case 1.nii.gz"
    image.write_bytes(b"x")
    asked = []

    def shortNames(path):
        asked.append(path)
        return path.replace("Données José", "DONNES~1")

    assert itk_path(image, os_name="nt", short_path=shortNames) == str(tmp_path / "DONNES~1" / "case 1.nii.gz")
    assert asked == [str(image)]
    # a file to write (not there yet): the folder is shortened, the ASCII name kept
    assert itk_path(folder / "out.nrrd", os_name="nt", short_path=shortNames) == str(tmp_path / "DONNES~1" / "out.nrrd")


def test_windows_without_short_name_is_a_clear_input_error(tmp_path):
    folder = tmp_path / "Données"
    folder.mkdir()
    (folder / "image.nrrd").write_bytes(b"x")
    with pytest.raises(NonAsciiPathError, match=r"Données.*image\.nrrd.*non-ASCII.*ASCII only") as caught:
        itk_path(folder / "image.nrrd", os_name="nt", short_path=lambda path: path)   # short names off
    assert isinstance(caught.value, PairSegInputError)                                 # exit 2 in the CLI
    with pytest.raises(NonAsciiPathError, match="é"):                                  # a non-ASCII new name
        itk_path(tmp_path / "résultat.nrrd", os_name="nt", short_path=lambda path: path)


def test_work_folder(tmp_path, monkeypatch):
    folder = tmp_path / "José" / "Temp"
    folder.mkdir(parents=True)
    monkeypatch.delenv("PAIRSEG_WORK_DIR", raising=False)
    assert ascii_work_folder(folder, os_name="nt",
                             short_path=lambda p: p.replace("José", "JOS~1")) == str(tmp_path / "JOS~1" / "Temp")
    assert ascii_work_folder(folder, os_name="nt", short_path=lambda p: p) == str(folder)   # engine names it
    monkeypatch.setenv("PAIRSEG_WORK_DIR", str(tmp_path / "work"))
    assert ascii_work_folder(folder, os_name="nt") == str(tmp_path / "work") and os.path.isdir(tmp_path / "work")
