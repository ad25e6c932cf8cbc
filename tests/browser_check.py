"""Drive a dictionary browser (ep.show.browser) in Chromium: shared by tests/test_browser.py and the book's test."""


def check_site(driver, index, search: str | None = None, expect: int | None = None, pages: int | None = None) -> None:
    """Open a browser site: search (by default for the largest region's first token), follow a result to its page
    and back, then open every (or the first ``pages``) region page: each must load, with no broken image."""
    from selenium.webdriver.common.by import By

    rows = lambda: driver.find_elements(By.CSS_SELECTOR, "#results tr")
    driver.get(index.as_uri())
    total = len(rows())
    assert total > 0 and driver.execute_script("return document.getElementById('map').getBBox().width") > 0
    if search is None:
        search = driver.execute_script("const r = JSON.parse(document.getElementById('regions-data').textContent)[0];"
                                       "return r.tokens[0] || r.label;").strip()
    driver.find_element(By.ID, "search").send_keys(search)
    hits = rows()
    assert 0 < len(hits) <= total and (expect is None or len(hits) == expect), (search, len(hits))
    link = hits[0].find_element(By.TAG_NAME, "a")
    target = link.get_attribute("href")
    link.click()
    assert driver.current_url == target and driver.find_elements(By.CSS_SELECTOR, "mark")
    driver.find_element(By.ID, "back").click()
    assert driver.current_url == index.as_uri() and len(rows()) == total
    driver.find_element(By.CSS_SELECTOR, "#map a").click()
    assert "/regions/" in driver.current_url
    for page in sorted((index.parent / "regions").glob("*.html"))[:pages]:
        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete" and driver.title, page
        bad = driver.execute_script("return Array.from(document.images).filter(i => !(i.complete && "
                                    "i.naturalWidth > 0)).map(i => i.src)")
        assert not bad and driver.find_elements(By.TAG_NAME, "h1"), page
