"""One module per sidebar page (``qt_<name>_page.py``) and the page list that orders them."""
