import pytest

from accounts.models import User

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]


def test_sign_up_signs_you_in(client):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "dora",
            "display_name": "Dora",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(username="dora")
    assert user.label() == "Dora" and not user.is_staff
    assert client.get("/").status_code == 200


def test_sign_up_errors_are_shown_and_nothing_is_created(client, alice):
    response = client.post(
        "/accounts/signup/", {"username": "alice", "password1": "x", "password2": "y"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "already exists" in html and "didn" in html  # "The two password fields didn’t match."
    assert User.objects.count() == 1


def test_sign_in_and_out(client, alice, password):
    response = client.post("/accounts/login/", {"username": "alice", "password": password})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_wrong_password_is_refused(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert (
        response.status_code == 200 and "correct username and password" in response.content.decode()
    )


def test_staff_reach_admin(client, django_user_model, password):
    django_user_model.objects.create_superuser("root", password=password)
    client.login(username="root", password=password)
    assert client.get("/admin/").status_code == 200
    assert b"Relays" in client.get("/admin/").content
