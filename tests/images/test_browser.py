"""JupyterLab from `make notebook`, driven in a real browser: Debian's headless Chromium through chromedriver."""

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from engine import make_settings, write_dotenv
from helpers import copy_repository, make_in_clone
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as loaded
from selenium.webdriver.support.ui import WebDriverWait

from eurosat import manifest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install them)"
)


def screenshot(driver, name: str) -> Path:
    """Save what the browser shows as TEST_ARTIFACTS/<name>.png (default: eurosat-test-artifacts in the temp dir)."""
    folder = Path(os.environ.get("TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "eurosat-test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))
    return folder / f"{name}.png"


@pytest.fixture(scope="module")
def jupyter(built_images, tmp_path_factory):
    """`make notebook` in a copy of the repository (its own .env, free ports): the URL with the token it printed."""
    root = copy_repository(tmp_path_factory.mktemp("browser") / "repo")
    write_dotenv(root, "JUPYTER_PORT", "TENSORBOARD_PORT")
    started = make_in_clone(root, "notebook", *make_settings())
    url = re.search(r"^Jupyter: +(http://\S+/lab\?token=[0-9a-f]{48})$", started.stdout, re.M).group(1)
    yield url
    make_in_clone(root, "down", *make_settings(), check=False)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # headless; no sandbox (CI runs as root, where Chromium's sandbox refuses to start); /tmp, not a small /dev/shm
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, selector: str, seconds: float = 60, by: str = By.CSS_SELECTOR):
    """The first element matching the selector (CSS unless `by` says otherwise), once the page shows it."""
    try:
        return WebDriverWait(driver, seconds).until(loaded.visibility_of_element_located((by, selector)))
    except TimeoutException:
        raise AssertionError(f"{selector} did not appear in {driver.current_url}: see {screenshot(driver, 'failed')}") from None


def directory_entry(driver, name: str):
    """The file browser's row for `name`, once the listing shows it."""
    return wait_for(driver, f".jp-DirListing-item[title^='Name: {name}']")


def test_jupyterlab_lists_opens_and_runs_the_notebook(jupyter, browser):
    browser.get(jupyter)
    wait_for(browser, "#jp-main-dock-panel", seconds=120)
    ActionChains(browser).double_click(directory_entry(browser, "notebooks")).perform()
    ActionChains(browser).double_click(directory_entry(browser, "train.ipynb")).perform()

    kernel_idle = "//*[contains(@class, 'jp-StatusBar')]//*[contains(text(), '| Idle')]"  # started and connected
    wait_for(browser, kernel_idle, seconds=120, by=By.XPATH)
    first_prompt = ".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt"  # found anew each time: JupyterLab re-renders cells
    run_cell = ActionChains(browser).click(wait_for(browser, first_prompt)).key_down(Keys.SHIFT).send_keys(Keys.ENTER)
    run_cell.key_up(Keys.SHIFT).perform()

    output = wait_for(browser, ".jp-NotebookPanel .jp-CodeCell .jp-OutputArea-output", seconds=120)
    project = manifest.default_project()
    assert output.text.startswith(f"project: {project} - "), output.text
    assert wait_for(browser, first_prompt).text == "[1]:"  # the kernel ran it, first
    assert "Jupyter news" not in browser.page_source  # images/jupyter/page_config.json: no prompt to fetch news
    print(f"\nscreenshot: {screenshot(browser, 'jupyterlab')}")


def test_the_explore_notebook_draws_its_figures_in_jupyterlab(jupyter, browser):
    """explore.ipynb opened and run (Run > Run All Cells) in the browser: its three figures are rendered on the page
    (the screenshot in the README)."""
    browser.get(jupyter.replace("/lab?", "/lab/tree/notebooks/explore.ipynb?"))  # JupyterLab opens the file
    tab = "//*[contains(@class, 'lm-mod-current')]//*[contains(@class, 'lm-TabBar-tabLabel')][text()='explore.ipynb']"
    wait_for(browser, tab, seconds=120, by=By.XPATH)  # the status bar now speaks of this notebook's kernel
    wait_for(browser, "//*[contains(@class, 'jp-StatusBar')]//*[contains(text(), '| Idle')]", seconds=120, by=By.XPATH)
    wait_for(browser, "//*[contains(@class, 'lm-MenuBar-itemLabel')][text()='Run']", by=By.XPATH).click()
    wait_for(browser, "//*[contains(@class, 'lm-Menu-itemLabel')][text()='Run All Cells']", by=By.XPATH).click()
    figures = "//*[contains(@class, 'jp-RenderedImage')]/img"
    try:
        WebDriverWait(browser, 180).until(lambda driver: len(driver.find_elements(By.XPATH, figures)) == 3)
    except TimeoutException:
        raise AssertionError(f"explore.ipynb did not draw its 3 figures: see {screenshot(browser, 'failed')}") from None
    for image in browser.find_elements(By.XPATH, figures):
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 300  # a decoded picture
    assert "Error" not in browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)").text
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_elements(By.XPATH, figures)[1])
    print(f"\nscreenshot: {screenshot(browser, 'explore')}")


def test_jupyterlab_without_the_token_asks_for_one(jupyter, browser):
    browser.get(jupyter.split("?")[0])  # the same URL, without ?token=
    field = wait_for(browser, "input[type='password']")
    assert "/login" in browser.current_url
    assert field.get_attribute("value") == ""
    assert not browser.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel")  # no JupyterLab behind it
