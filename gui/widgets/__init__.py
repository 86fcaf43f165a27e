"""The widgets pages are built from, and the theme's colours; a widget never imports a page."""
