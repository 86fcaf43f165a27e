"""The application and its main window: building the app, the menus and sidebar, screenshots."""
